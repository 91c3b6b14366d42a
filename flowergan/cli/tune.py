"""`flowergan tune`: a sweep of flowergan runs as one Ray Tune job (flowergan/tune/)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from flowergan.cli import app
from flowergan.config import load_config


@app.command()
def tune(
    config: Path = typer.Option(..., "--config", "-c", help="Job file every trial starts from (TOML)."),
    space: Path = typer.Option(..., "--space", help="Search space (TOML), e.g. jobs/sweeps/seed001.toml."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override of the base config: section.key=value."),
    out: Path | None = typer.Option(None, "--out", help="Sweep dir (default runs/sweeps/<space file's stem>)."),
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="Repeats of the grid (draws per repeat)."),
    scheduler: Literal["asha", "fifo"] = typer.Option("asha", "--scheduler", help="asha stops weak trials early."),
    max_concurrent: int = typer.Option(0, "--max-concurrent", min=0, help="Trials at once (0 = what fits)."),
    grace_period: int = typer.Option(1, "--grace-period", min=1, help="ASHA: evaluations before a stop."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out (finished trials stay)."),
    auto_resume: bool = typer.Option(False, "--auto-resume", help="Resume if --out holds a sweep, else start."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and space, print them, exit."),
    ray: bool = typer.Option(True, "--ray/--no-ray", hidden=True, help="Sweeps always run on Ray."),
    address: str | None = typer.Option(None, "--address", help="Ray address: auto or ray://HOST:10001."),
    workers: int | None = typer.Option(None, "--workers", help="Ray Train workers per trial."),
    gpus_per_worker: float | None = typer.Option(None, "--gpus-per-worker", help="cluster.gpus_per_worker"),
    cpus_per_worker: float | None = typer.Option(None, "--cpus-per-worker", help="cluster.cpus_per_worker"),
) -> None:
    """Sweep config fields with Ray Tune: every trial a full Ray Train run, ASHA on the in-training metric."""
    from flowergan.errors import UserError
    from flowergan.tune.space import describe, grid_size, load_space

    if not ray:
        raise UserError("--no-ray: sweeps run on Ray Tune; for one run without Ray use `flowergan train`")
    flags = {"cluster.address": address, "cluster.workers": workers, "cluster.gpus_per_worker": gpus_per_worker,
             "cluster.cpus_per_worker": cpus_per_worker}
    cfg = load_config(config, list(set_) + [f"{k}={v}" for k, v in flags.items() if v is not None])
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
