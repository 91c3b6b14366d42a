"""A test hook that stops this process at a chosen point, to prove restarts resume where they should.

FLOWERGAN_FAULT_STEP=n arms it for step n on rank FLOWERGAN_FAULT_RANK (default 0), at the point
FLOWERGAN_FAULT_POINT names:
  step   (default) in the training loop, right after optimizer step n;
  saved  right after checkpoint n is written to the run dir, before Ray Train is told of it (the window in
         which a crash leaves the run dir ahead of Ray storage).
FLOWERGAN_FAULT_ACTION says what happens there: `kill` (default) SIGKILLs this process; `hang` stops it for good,
so a test can kill the driver while the checkpoint exists only in the run dir; `perturb` (point `step` only)
nudges one of this rank's G weights outside the optimizer, so the ranks no longer agree (what a faulty GPU or a
stray in-place write would do) and the cross-rank consistency check must stop the run.
FLOWERGAN_FAULT_ONCE=path makes it happen once: the file is created first, and an existing file disarms the hook.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

POINTS = ("step", "saved")
ACTIONS = ("kill", "hang", "perturb")


def maybe_inject_fault(step: int, rank: int, point: str = "step", nets: Mapping[str, nn.Module] | None = None
                       ) -> None:
    """Kill, hang or perturb this process if the fault hook names this step, rank and point (no-op unless
    armed); `nets` (the plain G, D, ...) is what `perturb` changes."""
    at = os.environ.get("FLOWERGAN_FAULT_STEP")
    if not at or int(at) != step or int(os.environ.get("FLOWERGAN_FAULT_RANK", "0")) != rank:
        return
    where = os.environ.get("FLOWERGAN_FAULT_POINT", "step")
    if where not in POINTS:  # a misspelt point would otherwise never fire and the test would pass vacuously
        raise ValueError(f"FLOWERGAN_FAULT_POINT={where!r}: expected one of {POINTS}")
    if where != point:
        return
    action = os.environ.get("FLOWERGAN_FAULT_ACTION", "kill")
    if action not in ACTIONS:
        raise ValueError(f"FLOWERGAN_FAULT_ACTION={action!r}: expected one of {ACTIONS}")
    once = os.environ.get("FLOWERGAN_FAULT_ONCE")
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{action} at step {step} ({point}) on rank {rank}\n")
    if action == "perturb":
        if nets is None:
            raise ValueError(f"FLOWERGAN_FAULT_ACTION=perturb needs the nets (point 'step'), not point {point!r}")
        with torch.no_grad():
            w = next(nets["G"].parameters())
            w[(0,) * w.dim()] += 1e-3  # an index, not view(-1): a channels_last weight has no flat view
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # hang: until something outside kills this process
