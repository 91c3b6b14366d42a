"""Mend what a killed process leaves in an MLflow file store, so MLflow's own client can list the experiment again.

MLflow's file store writes a run's `meta.yaml` in place (open, truncate, dump): a process killed in between (a
sweep's driver SIGKILLed while a trial was creating its run, a preempted pod) leaves the file empty, and from then on
`search_runs` and the UI fail for the whole experiment ('NoneType' object has no attribute 'copy'). The store is in
maintenance mode upstream and will not get atomic writes, so a tracker that opens the store first rebuilds such a
file from what the run dir still holds: its id (the folder), its name (the `mlflow.runName` tag), its params and
metrics (untouched), marked KILLED. Only files older than `min_age_s` are touched: a live writer is mid-write for
milliseconds, not seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

META = "meta.yaml"


def store_root(uri: str) -> Path | None:
    """The folder of a file-store URI (`file:///…` or a plain path); None for a server or database store."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    return Path(local_file_uri_to_path(uri)) if is_local_uri(uri) else None


def _tag(run: Path, name: str, default: str) -> str:
    tag = run / "tags" / name
    return tag.read_text().strip() if tag.is_file() else default


def _rebuilt_meta(run: Path, experiment_id: str) -> dict[str, object]:
    """The fields MLflow's file store keeps in a run's meta.yaml, recovered from the run dir; status KILLED."""
    from mlflow.entities import RunStatus

    times = [p.stat().st_mtime for p in run.rglob("*") if p.is_file()] or [run.stat().st_mtime]
    return {
        "artifact_uri": (run / "artifacts").as_uri(), "deleted_time": None, "end_time": int(max(times) * 1000),
        "entry_point_name": "", "experiment_id": experiment_id, "lifecycle_stage": "active", "run_id": run.name,
        "run_name": _tag(run, "mlflow.runName", run.name), "source_name": "", "source_type": 4,  # LOCAL
        "source_version": "", "start_time": int(min(times) * 1000), "status": RunStatus.from_string("KILLED"),
        "tags": [], "user_id": _tag(run, "mlflow.user", "unknown"),
    }


def repair_killed_runs(uri: str, experiment_id: str, min_age_s: float = 10.0) -> list[str]:
    """Rebuild every empty run `meta.yaml` of the experiment (atomically); the ids of the runs mended."""
    import yaml

    root = store_root(uri)
    if root is None or not (root / experiment_id).is_dir():
        return []
    mended = []
    for meta in sorted((root / experiment_id).glob(f"*/{META}")):
        stat = meta.stat()
        if stat.st_size > 0 or time.time() - stat.st_mtime < min_age_s:
            continue
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(_rebuilt_meta(meta.parent, experiment_id), default_flow_style=False))
        os.replace(tmp, meta)
        mended.append(meta.parent.name)
    return mended


def repair_store(uri: str, min_age_s: float = 10.0) -> list[str]:
    """`repair_killed_runs` for every experiment of a file store (a sweep's driver, once its trials are done)."""
    root = store_root(uri)
    if root is None or not root.is_dir():
        return []
    return [run for exp in sorted(root.iterdir()) if exp.is_dir() and not exp.name.startswith(".")
            for run in repair_killed_runs(uri, exp.name, min_age_s)]


def report(mended: list[str]) -> None:
    """One warning line naming the runs mended, if any."""
    if mended:
        print(f"warning: MLflow runs {', '.join(mended)} were left empty by a killed process; rebuilt from their "
              "run dirs and marked KILLED", flush=True)
