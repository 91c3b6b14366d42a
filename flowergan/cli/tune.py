"""`flowergan tune`: a sweep of flowergan runs as one Ray Tune job (flowergan/tune/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from flowergan.cli.app import app
from flowergan.cli.options import Address, CpusPerWorker, DryRun, GpusPerWorker, Overrides, Workers
from flowergan.config import load_config

BaseJob = Annotated[Path, typer.Option("--config", "-c", help="Job file every trial starts from (TOML).")]
Space = Annotated[Path, typer.Option("--space", help="Search space (TOML), e.g. jobs/sweeps/seed001.toml.")]
SweepDir = Annotated[Path | None, typer.Option("--out", help="Sweep dir (default runs/sweeps/<space file's stem>).")]
NumSamples = Annotated[int, typer.Option("--num-samples", min=1, help="Repeats of the grid (draws per repeat).")]
Scheduler = Annotated[Literal["asha", "fifo"], typer.Option("--scheduler", help="asha stops weak trials early.")]
MaxConcurrent = Annotated[int, typer.Option("--max-concurrent", min=0, help="Trials at once (0 = what fits).")]
GracePeriod = Annotated[int, typer.Option("--grace-period", min=1, help="ASHA: evaluations before a stop.")]
ResumeSweep = Annotated[bool, typer.Option("--resume", help="Continue the sweep in --out (finished trials stay).")]
AutoResume = Annotated[bool, typer.Option("--auto-resume", help="Resume if --out holds a sweep, else start.")]
UseRay = Annotated[bool, typer.Option("--ray/--no-ray", hidden=True, help="Sweeps always run on Ray.")]


@app.command()
def tune(config: BaseJob, space: Space, set_: Overrides = [], out: SweepDir = None,  # noqa: B006
         num_samples: NumSamples = 1, scheduler: Scheduler = "asha", max_concurrent: MaxConcurrent = 0,
         grace_period: GracePeriod = 1, resume: ResumeSweep = False, auto_resume: AutoResume = False,
         dry_run: DryRun = False, ray: UseRay = True, address: Address = None, workers: Workers = None,
         gpus_per_worker: GpusPerWorker = None, cpus_per_worker: CpusPerWorker = None) -> None:
    """Sweep config fields with Ray Tune: every trial a full Ray Train run, ASHA on the in-training metric."""
    from flowergan.errors import UserError
    from flowergan.tune.space import describe, grid_size, load_space

    if not ray:
        raise UserError("--no-ray: sweeps run on Ray Tune; for one run without Ray use `flowergan train`")
    cfg = load_config(config, set_, flags={
        "--address": ("cluster.address", address), "--workers": ("cluster.workers", workers),
        "--gpus-per-worker": ("cluster.gpus_per_worker", gpus_per_worker),
        "--cpus-per-worker": ("cluster.cpus_per_worker", cpus_per_worker)})
    params = load_space(space, cfg)
    if dry_run:
        typer.echo(cfg.to_toml())
        typer.echo(f"# {grid_size(params) * num_samples} trial(s): {describe(params)}")
        return
    from flowergan_eval.api import in_training_evaluator

    from flowergan.tune.sweep import SweepOptions, run_sweep

    opts = SweepOptions(out=out or Path("runs") / "sweeps" / space.stem, num_samples=num_samples,
                        scheduler=scheduler, max_concurrent=max_concurrent, grace_period=grace_period,
                        resume=resume, auto_resume=auto_resume)
    rows = run_sweep(cfg, params, opts, in_training_evaluator)
    failed = [r.trial for r in rows if r.status == "error"]
    if failed:
        typer.secho(f"{len(failed)} of {len(rows)} trial(s) failed: {', '.join(failed)}", fg="yellow", err=True)
