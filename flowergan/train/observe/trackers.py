"""Experiment trackers next to TensorBoard (`log.backends`): MLflow and Weights & Biases, both optional extras.

Rank 0's RunLogger hands every scalar record to each tracker; the resolved config goes in as the run's params.
A resumed run continues the same tracker run (its id is kept in the run dir). Trackers cannot delete history, so
the steps a crashed attempt logged after its last checkpoint stay there (TensorBoard and metrics.jsonl drop them).
A run a killed process left unreadable in an MLflow file store is mended when the store is next opened
(mlflow_repair.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from flowergan.config import Config, LogConfig
from flowergan.errors import UserError
from flowergan.train.observe import mlflow_repair
from flowergan.train.observe.logs import RunLogger, Tracker

EXTRAS = {"mlflow": ("mlflow", "flowergan[mlflow]"), "wandb": ("wandb", "flowergan[wandb]")}  # module, extra


def backends(log: LogConfig) -> list[str]:
    """The backends `log.backends` names, in order, without blanks."""
    return [b.strip() for b in log.backends.split(",") if b.strip()]


def wants_tensorboard(log: LogConfig) -> bool:
    """TensorBoard events are written when `log.tensorboard` is on and `log.backends` lists tensorboard."""
    return log.tensorboard and "tensorboard" in backends(log)


def check_installed(log: LogConfig) -> None:
    """One line naming the extra to install for each tracker that cannot be imported (before any run starts)."""
    from importlib.util import find_spec

    for name in backends(log):
        if name in EXTRAS and find_spec(EXTRAS[name][0]) is None:
            raise UserError(f"log.backends: {name} is not installed; pip install '{EXTRAS[name][1]}' "
                            f"or drop {name} from log.backends")


def _flat(params: dict[str, Any]) -> dict[str, str]:
    return {f"{s}.{k}": str(v) for s, values in params.items() for k, v in values.items()}


def _experiment(cfg: Config, run_dir: Path) -> str:
    return cfg.log.experiment or cfg.cluster.name or run_dir.name or "flowergan"


class MLflowTracker:
    """One MLflow run per flowergan run, through MlflowClient (no process-global active run)."""

    ID_FILE = "mlflow-run.json"

    def __init__(self, uri: str, experiment: str, run_name: str, run_dir: Path, params: dict[str, str]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if mlflow_repair.store_root(uri) is not None:
            # MLflow >= 3.x refuses its file store unless asked; a local folder is what a laptop run wants.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        exp_id = self._experiment_id(experiment)
        mlflow_repair.report(mlflow_repair.repair_killed_runs(uri, exp_id))
        id_file = run_dir / self.ID_FILE
        stored = json.loads(id_file.read_text()) if id_file.is_file() else {}
        if stored.get("uri") == uri and stored.get("experiment_id") == exp_id:
            self.run_id = stored["run_id"]  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"uri": uri, "experiment_id": exp_id, "run_id": self.run_id}))
            os.replace(tmp, id_file)

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, created if missing; sweep trials starting together may race to create it."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:  # another trial created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """One W&B run per flowergan run (its mode, entity and key come from the usual WANDB_* variables)."""

    ID_FILE = "wandb-run.json"

    def __init__(self, project: str, run_name: str, run_dir: Path, params: dict[str, str]):
        import wandb

        id_file = run_dir / self.ID_FILE
        run_id = json.loads(id_file.read_text())["id"] if id_file.is_file() else wandb.util.generate_id()
        self.run = wandb.init(project=project, name=run_name, id=run_id, resume="allow", dir=str(run_dir),
                              config=params)
        id_file.write_text(json.dumps({"id": run_id}))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(cfg: Config, run_dir: Path) -> list[Tracker]:
    """The trackers `cfg.log.backends` asks for, each with a run named after this run."""
    check_installed(cfg.log)
    params, name, experiment = _flat(cfg.to_dict()), cfg.cluster.name or run_dir.name, _experiment(cfg, run_dir)
    out: list[Tracker] = []
    for backend in backends(cfg.log):
        if backend == "mlflow":
            uri = cfg.log.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
            out.append(MLflowTracker(uri, experiment, name, run_dir, params))
        elif backend == "wandb":
            out.append(WandbTracker(experiment, name, run_dir, params))
    return out


# The sections whose fields are the recipe (TensorBoard's HParams tab); [log], [eval] and [cluster] say where and
# how a run is watched, not what it learns.
RECIPE = ("data", "model", "optim", "train")


def open_run_logger(cfg: Config, run_dir: Path, start_step: int) -> RunLogger:
    """Rank 0's logger: metrics.jsonl, TensorBoard if asked (with the resolved config and the recipe's
    hyperparameters), and every tracker of `log.backends`."""
    recipe = {f"{s}.{k}": v for s, values in cfg.to_dict().items() if s in RECIPE for k, v in values.items()}
    return RunLogger(run_dir, wants_tensorboard(cfg.log), start_step=start_step, trackers=open_trackers(cfg, run_dir),
                     config_text=cfg.to_toml(), hparams=recipe)
