"""The one checkpoint manager of training: save, keep the newest N, roll back, find the resume point, load.

The files themselves (their layout, sha256 record, reading) are flowergan/artifacts/checkpoint.py; this class
decides when and which. Saving is a collective: every rank's RNG state is gathered to rank 0, which alone writes,
marks `best/` and prunes; then `on_checkpoint` runs on every rank (Ray Train requires the same number of reports).
Each save is also the in-memory snapshot a non-finite loss rolls back to, with new noise, at most
`train.nan_retries` times in a row. Resuming takes the newest intact checkpoint: a damaged newer one (a file
missing, truncated or altered) is skipped with one line that names it and says why.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.config import Config
from flowergan.errors import UserError
from flowergan.train import distributed as dist
from flowergan.train.state import rng
from flowergan.train.state.train_state import TrainState

# (step, the directory rank 0 wrote or None on other ranks, the metrics saved with it, the plain nets by name)
OnCheckpoint = Callable[[int, "Path | None", dict[str, float], dict[str, nn.Module]], None]


class CheckpointManager:
    """Checkpoints of one run (`root` = RUN_DIR/checkpoints) for this rank; `attach` a state before `save` or
    `roll_back`."""

    def __init__(self, root: Path, *, keep: int = 1, meta: dict[str, Any] | None = None, retries: int = 0,
                 seed: int = 0, on_checkpoint: OnCheckpoint | None = None):
        self.root, self.keep, self.meta, self.num_samples = root, keep, meta or {}, 0
        self.max_retries, self.seed, self.on_checkpoint = retries, seed, on_checkpoint
        self.rank, self.world = dist.rank(), dist.world_size()
        self.writer = self.rank == 0
        self.retries = 0
        self.state: TrainState | None = None
        self.good: dict[str, Any] = {}

    # ------------------------------------------------------------------ resume
    def newest_intact(self) -> tuple[Path | None, str | None]:
        """This process's view: the newest checkpoint whose files match their record, and one line naming the newer
        damaged ones it skipped (None when it skipped none)."""
        skipped: list[str] = []
        for ckpt in reversed(ckpt_io.step_dirs(self.root)):
            problem = ckpt_io.damage(ckpt)
            if problem is None:
                return ckpt, _skipped_line(skipped, f"resuming from {ckpt.name}")
            skipped.append(f"{ckpt.name} ({problem})")
        return None, _skipped_line(skipped, "no intact checkpoint is left")

    def resume_point(self, device: torch.device, *, resume: bool = True, restored: str | None = None) -> str | None:
        """Where to continue, the same on every rank: the newer of `restored` (a launcher's checkpoint, e.g. Ray
        Train's, the same on every rank) and rank 0's newest intact checkpoint under `root`. Without `resume` (and
        no launcher checkpoint) an existing checkpoint is an error: a new run must not overwrite an old one."""
        found = any_dir = error = None
        if self.rank == 0:  # rank 0 reads and checks; every rank gets its answer (or its error)
            newest, line = self.newest_intact()
            dirs = ckpt_io.step_dirs(self.root)
            any_dir = dirs[-1].name if dirs else None
            asked = resume or restored is not None
            if line is not None and asked:
                print(f"warning: {line}", flush=True)
            if newest is None and any_dir is not None and asked and restored is None:
                error = (f"{self.root}: every checkpoint is damaged ({line}); `flowergan verify "
                         f"{self.root.parent}` lists them; start a new --run-dir")
            found = str(newest) if newest is not None else None
        local, any_dir, error = json.loads(dist.broadcast_text(json.dumps([found, any_dir, error]), device) or "[]")
        if error is not None:
            raise UserError(error)
        if any_dir is not None and not resume and restored is None:
            raise UserError(f"{self.root.parent} already holds checkpoints; pass --resume to continue from "
                            f"{Path(local).name if local else any_dir}, or choose a new --run-dir")
        if local is None or ckpt_io.step_of(local) <= ckpt_io.step_of(restored):
            return restored
        if dist.all_true(torch.tensor(Path(local).is_dir(), device=device)):
            return local
        if restored is not None:
            if self.rank == 0:
                print(f"warning: {local} is newer than {restored} but not visible on every rank; resuming from "
                      f"{restored} (put log.run_dir on storage all nodes share)", flush=True)
            return restored
        raise UserError(f"checkpoint {local} in log.run_dir is not visible on every worker; put log.run_dir on "
                        "storage shared by all nodes (the PVC) or resume from cluster.storage_path")

    def load(self, ckpt: Path, cfg: Config, state: TrainState) -> None:
        """Load `ckpt` (checked against its sha256 record) into `state`: this rank's own RNG state when the world
        size is the one it was saved with; across world sizes each rank's noise stream is re-derived and one line
        says so."""
        note = load_state(ckpt, cfg, state, self.rank, self.world)
        if note is not None:
            rng.reseed(cfg.train.seed, self.rank, state.step)
            if self.rank == 0:
                print(f"note: {note}", flush=True)

    # ------------------------------------------------------------------ save and roll back
    def attach(self, state: TrainState, num_samples: int) -> None:
        """The state to save and roll back (its current value is the first good one); `num_samples`: the data set's
        size, for the epoch a checkpoint records."""
        self.state, self.num_samples = state, num_samples
        self.good = state.snapshot()
        self.retries = 0

    def save(self, metrics: dict[str, float], best: bool) -> Path | None:
        """One checkpoint of the attached state (a collective: every rank calls it at the same steps); the state is
        then the one a rollback returns to."""
        state = self._attached()
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
        self.good = state.snapshot()
        self.retries = 0
        return path

    def roll_back(self) -> str:
        """Go back to the last good state (the last save) with new noise; returns the line to show. Raises once the
        retries are used up."""
        state = self._attached()
        self.retries += 1
        bad, good = state.step, int(self.good["step"])
        if self.retries > self.max_retries:
            raise UserError(f"non-finite loss persisted after {self.max_retries} rollbacks at step {bad}; "
                            "lower optim.lr_d / optim.lr_g or set train.amp=off")
        # A copy: Optimizer.load_state_dict keeps the very tensors it is given, and Adam updates them in place.
        state.load_state_dict({**copy.deepcopy(self.good), "rng": None})
        # New noise so the retry does not replay the exact same divergence.
        rng.reseed(self.seed, self.rank, 7919 * self.retries)
        return (f"non-finite loss between steps {good} and {bad}: rolling back to step {good} "
                f"(retry {self.retries} of {self.max_retries})")

    def _attached(self) -> TrainState:
        if self.state is None:
            raise RuntimeError("CheckpointManager.attach(state) first")
        return self.state


def _skipped_line(skipped: list[str], outcome: str) -> str | None:
    if not skipped:
        return None
    return f"skipped damaged checkpoint{'s' if len(skipped) > 1 else ''} {', '.join(skipped)}; {outcome}"


def load_state(ckpt: Path, cfg: Config, state: TrainState, rank: int, world: int) -> str | None:
    """Load `ckpt` into `state` (this rank's own RNG state when the world size is the one it was saved with).
    Returns None, or one line saying the noise streams must be re-derived (another world size, or a checkpoint
    without RNG states): the caller reseeds and continues."""
    tensors = ckpt_io.load_weights(ckpt)  # checks the sha256 record first
    for name, module in state.nets.items():
        ckpt_io.load_into(module, tensors, name, ckpt, cfg)  # an architecture mismatch is one line, before anything
    extra = ckpt_io.read_optim(ckpt)
    meta = ckpt_io.read_state(ckpt)
    rngs = extra.get("rng")
    rngs = rngs if isinstance(rngs, list) else [rng.from_legacy(rngs)] if isinstance(rngs, dict) else []
    saved_best = meta.get("best")
    sd = {**{k: state.nets[k].state_dict() for k in state.nets}, "opt_g": extra["opt_g"], "opt_d": extra["opt_d"],
          "scaler": extra["scaler"], "step": meta["step"], "images_seen": meta["images_seen"],
          "best": state.best if saved_best is None else saved_best,
          "rng": rngs[rank] if len(rngs) == world else None}
    state.load_state_dict(sd)
    if len(rngs) == world:
        return None
    saved = f"{len(rngs)} rank(s)" if rngs else "a run that kept no RNG states"
    return (f"{ckpt.name} was saved by {saved} and resumes with {world}: noise streams are re-derived from "
            "train.seed and the step, so the run continues but is not bit-identical to an uninterrupted one")
