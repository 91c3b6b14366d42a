"""A test hook that kills this process at a chosen step, to prove restarts resume where they should.

FLOWERGAN_FAULT_STEP=n kills the process with SIGKILL when it reaches step n, on rank FLOWERGAN_FAULT_RANK
(default 0). FLOWERGAN_FAULT_ONCE=path makes it happen once: the file is created before the kill.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def maybe_inject_fault(step: int, rank: int) -> None:
    """SIGKILL this process if the fault hook names this step and rank (no-op unless the env var is set)."""
    at = os.environ.get("FLOWERGAN_FAULT_STEP")
    if not at or int(at) != step or int(os.environ.get("FLOWERGAN_FAULT_RANK", "0")) != rank:
        return
    once = os.environ.get("FLOWERGAN_FAULT_ONCE")
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"killed at step {step} on rank {rank}\n")
    os.kill(os.getpid(), signal.SIGKILL)
