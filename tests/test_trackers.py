"""`[log] backends`: a real run logs to a local MLflow file store, read back through MLflow's own client (params
are the resolved config, metrics every logged step, the run ends FINISHED); a resumed run continues the same MLflow
run; a backend that is not installed, or not known, is one line before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from _core import TensorStream, tiny_config

from flowergan.config import ConfigError
from flowergan.errors import UserError
from flowergan.train.observe import mlflow_repair, trackers

mlflow = pytest.importorskip("mlflow")


def _train(run_dir: Path, *extra: str, steps: int = 10, resume: bool = False):
    from flowergan.train.loop import train

    cfg = tiny_config(run_dir, f"train.steps={steps}", "log.every=5", "train.checkpoint_every=10",
                      "log.sample_every=100", "cluster.name=tiny", *extra)
    train(cfg, stream=TensorStream(), resume=resume)
    return cfg


def test_mlflow_file_store_read_back(tmp_path: Path, one_thread) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    run_dir = tmp_path / "run"
    cfg = _train(run_dir, "log.backends=tensorboard,mlflow", f"log.mlflow_uri={uri}", "log.experiment=exp1")

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp1")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "10" and run.data.params["model.ngf"] == "8"
    assert run.data.params["log.backends"] == "tensorboard,mlflow"
    history = client.get_metric_history(run.info.run_id, "Loss/D")
    assert [m.step for m in history] == [5, 10]
    # The same numbers metrics.jsonl holds (one source, two sinks).
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx([r["Loss/D"] for r in rows if "Loss/D" in r])
    assert (run_dir / "tb").is_dir(), "tensorboard is still listed, so its events are written too"

    # Resume: the same MLflow run continues (no second run), its history grows past step 10.
    cfg.train.steps = 20
    from flowergan.train.loop import train

    train(cfg, stream=TensorStream(), resume=True)
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "Loss/D")] == [5, 10, 15, 20]


def test_mlflow_default_store_is_in_the_run_dir(tmp_path: Path, one_thread, monkeypatch) -> None:
    """Without a URI (and no $MLFLOW_TRACKING_URI) the store is <run_dir>/mlruns; no TensorBoard if not listed."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    _train(run_dir, "log.backends=mlflow")
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tiny")  # cluster.name names the experiment when log.experiment is ''
    assert exp is not None and len(client.search_runs([exp.experiment_id])) == 1
    assert not (run_dir / "tb").exists()


def test_backend_errors_are_one_line(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"log.backends: 'comet' is not allowed; use a comma-separated subset of: "
                                          r"tensorboard, mlflow, wandb"):
        tiny_config(tmp_path, "log.backends=tensorboard,comet")
    cfg = tiny_config(tmp_path, "log.backends=wandb")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(UserError, match=r"log.backends: wandb is not installed; pip install 'flowergan\[wandb\]'"):
        trackers.check_installed(cfg.log)
    assert trackers.backends(tiny_config(tmp_path, "log.backends= mlflow , ,tensorboard").log) == ["mlflow",
                                                                                                    "tensorboard"]
    assert not trackers.wants_tensorboard(tiny_config(tmp_path, "log.tensorboard=false").log)


_KILLED_WHILE_CREATING = """
import os, sys, yaml
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
exp_id = client.create_experiment("exp1")
# Die the way a SIGKILL mid-write does: after MLflow opened (truncated) the run's meta.yaml, before it is written.
yaml.dump = lambda *args, **kwargs: os._exit(9)
client.create_run(exp_id, run_name="killed")
"""


def test_a_run_killed_while_mlflow_wrote_it_is_mended_when_the_store_is_next_opened(tmp_path: Path,
                                                                                     one_thread) -> None:
    """The CI failure this mends: a sweep's driver SIGKILLed while a trial created its MLflow run left an empty
    meta.yaml, and MLflow's own client then failed to list the experiment; the next tracker rebuilds it (KILLED)."""
    import os
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    proc = subprocess.run([sys.executable, "-c", _KILLED_WHILE_CREATING, uri], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    (meta,) = (tmp_path / "mlruns").glob("*/*/meta.yaml")
    assert meta.stat().st_size == 0, "the killed process left the run's meta.yaml empty"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp1")
    assert exp is not None
    with pytest.raises(AttributeError):  # MLflow's own listing fails on it (if MLflow mends this, drop the repair)
        client.search_runs([exp.experiment_id])

    # A file being written this moment is left alone; one as old as a killed write is rebuilt.
    assert mlflow_repair.repair_killed_runs(uri, exp.experiment_id) == []
    past = time.time() - 60
    os.utime(meta, (past, past))
    _train(tmp_path / "run", "log.backends=mlflow", f"log.mlflow_uri={uri}", "log.experiment=exp1")
    # The kill came before MLflow wrote the run's tags, so its name is lost: the rebuilt run is named by its id.
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    killed = meta.parent.name
    assert set(runs) == {killed, "tiny"}
    assert runs[killed].info.status == "KILLED" and runs[killed].info.run_id == killed
    assert runs["tiny"].info.status == "FINISHED"
