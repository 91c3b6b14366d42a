"""A tiny trained run (64 px, ngf 8, 10 steps on fixed random images) for the export, sample and API tests."""

from __future__ import annotations

from pathlib import Path

from _core import TensorStream, tiny_config


def tiny_run(run_dir: Path, steps: int = 10) -> Path:
    """Train `steps` steps into `run_dir` (one checkpoint at the end) and return the run dir."""
    from flowergan.train.loop import train

    train(tiny_config(run_dir, f"train.steps={steps}", f"train.checkpoint_every={steps}",
                      f"log.sample_every={steps}"), stream=TensorStream())
    return run_dir
