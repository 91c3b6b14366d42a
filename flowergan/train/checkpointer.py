"""Writing checkpoints during training: every rank's RNG state gathered to rank 0, which alone writes, marks
`best/` and prunes; then `on_checkpoint` on every rank (Ray Train requires the same number of reports)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from flowergan.train import checkpoint as ckpt_io
from flowergan.train import rng
from flowergan.train.state import TrainState

# (step, the directory rank 0 wrote or None on other ranks, the metrics saved with it, the plain nets by name)
OnCheckpoint = Callable[[int, "Path | None", dict[str, float], dict[str, nn.Module]], None]


class Checkpointer:
    def __init__(self, root: Path, keep: int, meta: dict[str, Any], num_samples: int, writer: bool,
                 on_checkpoint: OnCheckpoint | None = None):
        self.root, self.keep, self.meta, self.num_samples = root, keep, meta, num_samples
        self.writer, self.on_checkpoint = writer, on_checkpoint

    def save(self, state: TrainState, metrics: dict[str, float], best: bool) -> Path | None:
        """One checkpoint of `state` (a collective: every rank calls it at the same steps)."""
        sd = state.state_dict()
        rngs = rng.gather(sd["rng"], state.device)
        path = None
        if self.writer:
            meta = {**self.meta, "epoch": state.images_seen / max(self.num_samples, 1), "metrics": metrics}
            path = ckpt_io.save_state(self.root, sd, rngs, meta)
            if best:
                ckpt_io.mark_best(path)
            ckpt_io.prune(self.root, self.keep)
        if self.on_checkpoint is not None:
            self.on_checkpoint(state.step, path, metrics, state.nets)
        return path

