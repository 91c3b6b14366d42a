"""Run logging on rank 0: TensorBoard scalars, images, the resolved config (text) and the recipe's hyperparameters with
the final metrics (HParams), plus the same scalars as JSON lines.

Other ranks get `NullLogger`, so the loop never asks which rank it is before logging.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from flowergan.outputs import write_atomic


def _trim_jsonl(path: Path, first_new: int) -> None:
    """Drop records with step >= first_new (and a torn last line from a crash); atomic, so a crash here loses
    nothing."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < first_new:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_atomic(path, "".join(f"{line}\n" for line in kept))


class Tracker(Protocol):
    """What RunLogger forwards scalars to."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """What every rank but 0 logs with: nothing."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def image(self, tag: str, step: int, grid: torch.Tensor) -> None:
        pass

    def finish(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


# The tags whose last value the HParams tab shows next to the hyperparameters: the losses, D's outputs, speed and
# every in-training score.
FINAL = ("Loss/", "D/", "Speed/", "Eval/")


class RunLogger(NullLogger):
    """TensorBoard events under `<run_dir>/tb` and `metrics.jsonl` (one object per call) in the run dir.

    A run that starts at `start_step` (the resumed checkpoint's step, 0 for a fresh start) first forgets what an
    earlier attempt logged after that step, so curves never overlap: TensorBoard hides those events
    (`purge_step`) and `metrics.jsonl` is rewritten without them. Scalars also go to each of `trackers` (MLflow,
    W&B: trackers.py), which the logger closes with itself.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, start_step: int = 0,
                 trackers: Sequence[Tracker] = (), config_text: str = "", hparams: dict[str, Any] | None = None):
        self.trackers = list(trackers)
        self.hparams = dict(hparams or {})
        self.last: dict[str, float] = {}  # each scalar tag's newest value
        # Everything logged at the resumed step itself describes the checkpointed state and stays.
        first_new = start_step + 1 if start_step > 0 else 0
        _trim_jsonl(run_dir / "metrics.jsonl", first_new)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered: readable mid-run
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=first_new)
            if config_text:  # TEXT tab; indented, so TensorBoard's markdown shows it as a code block
                self.tb.add_text("config", "\n".join(f"    {line}" for line in config_text.splitlines()),
                                 start_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        self.last.update(values)
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)
        for tracker in self.trackers:
            tracker.scalars(step, values)

    def image(self, tag: str, step: int, grid: torch.Tensor) -> None:
        """`grid` is a [3, H, W] float tensor in [0, 1]."""
        if self.tb is not None:
            self.tb.add_image(tag, grid, step)

    def finish(self, step: int) -> None:
        """At the end of training: the HParams tab's session for this run, the hyperparameters with the final value
        of each FINAL tag. Written into the run's own event files (not the sub-run SummaryWriter.add_hparams makes),
        so the session is the run, and its metrics are the scalars already logged under those tags."""
        if self.tb is None or not self.hparams:
            return
        from torch.utils.tensorboard.summary import hparams

        final = {tag: v for tag, v in self.last.items() if tag.startswith(FINAL)}
        writer = self.tb._get_file_writer()
        for summary in hparams(self.hparams, final):
            writer.add_summary(summary, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        for tracker in self.trackers:
            tracker.close()
