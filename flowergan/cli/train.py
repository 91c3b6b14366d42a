"""`flowergan train`, `flowergan sample` and `flowergan config`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flowergan.cli.app import app
from flowergan.cli.options import Address, CpusPerWorker, DryRun, GpusPerWorker, JobFile, Overrides, Workers
from flowergan.config import Config, describe, load_config
from flowergan.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from flowergan.train.evaluation import Evaluate


# Options as Annotated aliases (one style in every command; the shared ones are in cli/options.py).
RunDir = Annotated[str | None, typer.Option("--run-dir", help="Where outputs go (overrides log.run_dir).")]
Device = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda (overrides train.device).")]
Ray = Annotated[bool, typer.Option("--ray", help="Run as Ray Train workers (DDP) instead of one process.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in the run dir.")]


@app.command()
def train(config: JobFile = None, set_: Overrides = [], run_dir: RunDir = None, resume: Resume = False,  # noqa: B006
          device: Device = None, dry_run: DryRun = False, ray: Ray = False, address: Address = None,
          workers: Workers = None, gpus_per_worker: GpusPerWorker = None,
          cpus_per_worker: CpusPerWorker = None) -> None:
    """Train a DCGAN as a job file says; the same file runs locally and on a Ray cluster."""
    cfg = load_config(config, set_, flags={
        "--run-dir": ("log.run_dir", run_dir), "--device": ("train.device", device),
        "--address": ("cluster.address", address), "--workers": ("cluster.workers", workers),
        "--gpus-per-worker": ("cluster.gpus_per_worker", gpus_per_worker),
        "--cpus-per-worker": ("cluster.cpus_per_worker", cpus_per_worker)})
    if dry_run:
        typer.echo(cfg.to_toml())
        return
    # In-training FID/KID comes from the eval package and is handed to the loop: the loop never imports it.
    from flowergan_eval.api import in_training_evaluator

    from flowergan.train import distributed as dist

    if ray:
        if dist.launched_by_torchrun():
            raise UserError("--ray starts its own workers: run `flowergan train --ray` once, not under torchrun")
        from flowergan.train.launch.ray_train import run_ray

        metrics = run_ray(cfg, resume=resume, make_evaluate=in_training_evaluator)
    elif dist.launched_by_torchrun():
        on_rank0 = _train_torchrun(cfg, resume, in_training_evaluator(cfg))
        if on_rank0 is None:
            return  # one summary, from rank 0
        metrics = on_rank0
    else:
        from flowergan.train.loop import train as train_loop

        metrics = train_loop(cfg, resume=resume, evaluate=in_training_evaluator(cfg))
    _summary(Path(cfg.log.run_dir), metrics)


def _train_torchrun(cfg: Config, resume: bool, evaluate: Evaluate | None) -> dict[str, float] | None:
    """One rank of `torchrun --nproc-per-node N -m flowergan train ...`: the process group from torchrun's
    environment, the loop, and the cross-rank consistency check at every checkpoint. Rank 0's metrics; None on
    the other ranks."""
    from flowergan.train import distributed as dist
    from flowergan.train.launch.consistency import check_ranks_agree
    from flowergan.train.loop import train as train_loop

    device = dist.init_from_env(cfg.train.device, cfg.cluster.pg_timeout_s)
    try:
        def on_checkpoint(step: int, path: Path | None, metrics: dict[str, float], nets: dict[str, nn.Module]
                          ) -> None:
            digests = check_ranks_agree(step, path, nets, device)
            if path is not None:
                typer.echo(f"checkpoint {step}: G/D/G_ema parameters identical on all {len(digests)} ranks "
                           f"(sha256 {digests[0]})")

        metrics = train_loop(cfg, resume=resume, device=device, on_checkpoint=on_checkpoint, evaluate=evaluate)
        return metrics if dist.rank() == 0 else None
    finally:
        dist.shutdown()


def _summary(run_dir: Path, metrics: dict[str, float]) -> None:
    hidden = ("LR/", "Progress/", "Check/", "Ray/", "step", "epoch")  # the rest: losses, speed, eval scores
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                      if not k.startswith(hidden) and isinstance(v, (int, float)) and not _one_class(k))
    typer.echo(f"done: {shown}" if shown else "done")
    typer.echo(f"  checkpoints   {run_dir / 'checkpoints'}")
    typer.echo(f"  samples       {run_dir / 'samples'}  (progress GIF: {run_dir / 'progress.gif'})")
    typer.echo(f"  loss curves   {run_dir / 'losses.png'}")
    typer.echo(f"  TensorBoard   {reachable('tensorboard')} --logdir {run_dir / 'tb'} --samples_per_plugin images=0")


def reachable(command: str) -> str:
    """`command` as a shell here runs it: bare when it is on PATH, else its path beside this Python (the venv's bin,
    which `make demo` does not put on PATH), relative to the working folder when inside it."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / command
    if shutil.which(command) or not beside.is_file():
        return command
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _one_class(key: str) -> bool:
    """A per-class metric's value for one class (intra_fd1k/rose): TensorBoard and metrics.jsonl keep those; the
    summary line shows the metric's mean and coverage only."""
    import re

    from flowergan.catalogue import METRICS

    m = re.match(r"^([a-z_]+?)\d+k?(/.+)$", key)
    facts = METRICS.get(m.group(1)) if m else None
    return bool(m and facts and facts.per_class and m.group(2) not in facts.notes)


@app.command("config")
def config_fields() -> None:
    """List every config field with its default and what it allows."""
    typer.echo(describe())
