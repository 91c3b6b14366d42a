"""A finished sweep as rows (one per trial): the rich table, results.csv and results.json, and the best trial.

Each row: the trial's name, status (done, stopped = ended early by the scheduler, error), its values, its best
in-training score and the step it was reached at, its last step, run dir, best checkpoint and error line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialRow:
    """One trial of a sweep, as the table, the CSV and the JSON show it."""

    trial: str
    status: str  # done | stopped | error
    values: dict[str, Any]
    score: float | None  # best in-training score (the sweep's metric), None before any evaluation
    score_step: int | None
    last_step: int | None
    steps: int | None  # the step the trial would have ended at
    run_dir: str
    checkpoint: str  # the best checkpoint ('' when there is none)
    error: str = ""
    scores: list[tuple[int, float]] = field(default_factory=list)  # (step, score) per evaluation


def status_of(error: str, last_step: int | None, steps: int | None) -> str:
    """error, stopped (ended before its last step: the scheduler stopped it) or done."""
    if error:
        return "error"
    if last_step is not None and steps is not None and last_step < steps:
        return "stopped"
    return "done"


def best_row(rows: list[TrialRow], lower_is_better: bool) -> TrialRow | None:
    """The trial with the best score (trials without one, and failed ones, never win)."""
    scored = [r for r in rows if r.status != "error" and r.score is not None and math.isfinite(r.score)]
    if not scored:
        return None
    key = (lambda r: r.score) if lower_is_better else (lambda r: -(r.score or 0.0))
    return min(scored, key=key)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out: Path, rows: list[TrialRow], metric: str, lower_is_better: bool) -> None:
    """`results.csv` (one line per trial, values as columns) and `results.json` (rows plus the best trial)."""
    best = best_row(rows, lower_is_better)
    fields = sorted({k for r in rows for k in r.values})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "status", *fields, metric, "score_step", "last_step", "steps", "run_dir",
                     "checkpoint", "error"])
    for r in rows:
        writer.writerow([r.trial, r.status, *(r.values.get(f, "") for f in fields),
                         "" if r.score is None else r.score, r.score_step, r.last_step, r.steps, r.run_dir,
                         r.checkpoint, r.error])
    _atomic_write(out / "results.csv", buf.getvalue())
    doc = {"metric": metric, "mode": "min" if lower_is_better else "max",
           "best": best.trial if best is not None else None,
           "best_checkpoint": best.checkpoint if best is not None else None,
           "trials": [asdict(r) for r in rows]}
    _atomic_write(out / "results.json", json.dumps(doc, indent=2, default=str) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(rows: list[TrialRow], metric: str, lower_is_better: bool, out: Path) -> None:
    """The rich table of every trial, then the best trial and where everything is."""
    from rich.console import Console
    from rich.table import Table

    best = best_row(rows, lower_is_better)
    fields = sorted({k for r in rows for k in r.values})
    table = Table(title=f"sweep {out.name}: {len(rows)} trials, {metric} ({'lower' if lower_is_better else 'higher'}"
                        " is better)")
    for col in ("trial", "status", *fields, f"best {metric}", "at step", "last step", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = "bold green" if best is not None and r.trial == best.trial else None
        table.add_row(r.trial, r.status, *(_fmt(r.values.get(f)) for f in fields), _fmt(r.score),
                      _fmt(r.score_step), _fmt(r.last_step), r.error[:200], style=style)
    console = Console(width=max(120, Console().width))
    console.print(table)
    if best is not None:
        console.print(f"best: {best.trial} ({metric} {best.score:.4g} at step {best.score_step})", soft_wrap=True)
        console.print(f"  checkpoint    {best.checkpoint}", soft_wrap=True)
    else:
        console.print("best: none (no trial reported a score)")
    console.print(f"  results       {out / 'results.csv'}  {out / 'results.json'}", soft_wrap=True)
    console.print(f"  TensorBoard   tensorboard --logdir {out / 'runs'}", soft_wrap=True)
