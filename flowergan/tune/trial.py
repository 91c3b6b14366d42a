"""What one Tune trial runs: the sweep's base config with the trial's values, as one Ray Train run.

The trial is a Tune function trainable that builds and fits a `TorchTrainer` through `run_ray` (Ray Train V2's
way of tuning: the trial is the Train driver). Train's reports reach Tune through a `TuneReportCallback` in the
trainer's RunConfig; only the reports that carry the in-training score are forwarded, so Tune's
`training_iteration` counts evaluations and ASHA's rungs are evaluation counts.
A restarted trial (a resumed sweep) relaunches the same Ray Train run name, so it continues from its newest
checkpoint instead of starting over (ray_train.py's resume rules).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from flowergan.config import from_dict
from flowergan.train.launch.ray_train import MakeEvaluate, run_ray
from flowergan.tune.space import apply_params


class ReportScores(TuneReportCallback):
    """Forward to Tune only the Train reports (rank 0's metrics) that hold `key`, the in-training score."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and self.key in metrics[0]:
            # Scalars only: Tune's loggers cannot write the per-rank parameter hashes (a list).
            scalars = {k: v for k, v in metrics[0].items() if not isinstance(v, (list, tuple, dict))}
            super().after_report(run_context, [scalars, *metrics[1:]], checkpoint)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_name(trial_id: str, values: dict[str, Any]) -> str:
    """`t003-batch_size=64-d_head=conv`: the trial's index and values, safe as a directory and Ray Train name."""
    index = trial_id.rsplit("_", 1)[-1][-3:]
    parts = [f"{field.split('.', 1)[1]}={_short(v)}" for field, v in sorted(values.items())]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join([f"t{index}", *parts]))[:120]


def run_dir_of(sweep_dir: Path, name: str) -> Path:
    """A trial's run dir: all of them under one folder, so one TensorBoard logdir overlays their curves."""
    return sweep_dir / "runs" / name


def run_trial(values: dict[str, Any], *, base: dict[str, Any], sweep_dir: str, score_key: str,
              make_evaluate: MakeEvaluate | None) -> None:
    """Tune's function trainable: one full flowergan run of `base` with `values`, as Ray Train workers."""
    name = ray.tune.get_context().get_trial_name()
    cfg = apply_params(from_dict(base), values)
    cfg.log.run_dir = str(run_dir_of(Path(sweep_dir), name))
    cfg.cluster.name = name
    cfg.cluster.storage_path = cfg.cluster.storage_path or str(Path(sweep_dir) / "ray")
    if not cfg.log.experiment:
        cfg.log.experiment = Path(sweep_dir).name  # trackers: every trial one run of the sweep's experiment
    run_ray(cfg, resume=False, make_evaluate=make_evaluate, callbacks=[ReportScores(score_key)])
