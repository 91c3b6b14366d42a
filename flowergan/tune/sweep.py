"""The sweep driver: a Ray Tune `Tuner` over the trial function, fresh or restored, and its results.

Layout of a sweep dir (`--out`):
    sweep.json      the base config, the space and the options (a resumed sweep must match it)
    tune/           Tune's experiment state (what `Tuner.restore` reads) and one folder per trial
    runs/<trial>/   each trial's flowergan run dir: checkpoints, samples, TensorBoard (`tensorboard --logdir runs`)
    ray/<trial>/    each trial's Ray Train storage (or cluster.storage_path/sweeps/<sweep>/ when that is set)
    mlruns/         MLflow's file store when log.backends has mlflow and no tracking URI is given
    results.csv, results.json
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from flowergan.config import Config, from_dict
from flowergan.errors import UserError
from flowergan.train.launch.ray_train import MakeEvaluate, resolve_paths
from flowergan.train.observe import mlflow_repair
from flowergan.train.observe.trackers import backends, check_installed
from flowergan.tune import results as R
from flowergan.tune.space import Param, apply_params, describe, grid_size
from flowergan.tune.trial import run_dir_of, run_trial, trial_name

EXPERIMENT = "tune"  # Tune's experiment folder inside the sweep dir
TRIAL_MEMORY = 256 * 2**20  # bytes reserved for each trial's driver process (it trains nothing itself)


@dataclass
class SweepOptions:
    """What `flowergan tune` takes besides the config and the space."""

    out: Path
    num_samples: int = 1  # repeats of the grid (each draws its own choice / uniform values)
    scheduler: str = "asha"  # asha | fifo
    max_concurrent: int = 0  # 0 = as many trials as the cluster's CPUs and GPUs hold at once
    grace_period: int = 1  # ASHA: evaluations before a trial can be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    resume: bool = False
    auto_resume: bool = False  # resume when the sweep dir holds a sweep, else start (a retried cluster job)


def _param_space(params: list[Param]) -> dict[str, Any]:
    """The Tune search space: one top-level key per field ("train.batch_size")."""
    space: dict[str, Any] = {}
    for p in params:
        if p.kind == "grid":
            space[p.field] = ray.tune.grid_search(list(p.values))
        elif p.kind == "choice":
            space[p.field] = ray.tune.choice(list(p.values))
        elif p.lo == p.hi:  # a range of one value
            space[p.field] = p.lo
        else:
            space[p.field] = (ray.tune.uniform if p.kind == "uniform" else ray.tune.loguniform)(p.lo, p.hi)
    return space


def _evaluations(cfg: Config) -> int:
    """In-training evaluations of a full run (ASHA's max_t); epochs-based runs count from the manifest."""
    return max(1, math.ceil(_total_steps(cfg) / cfg.eval.every))


def _total_steps(cfg: Config) -> int:
    from flowergan.train.loop import total_steps

    if cfg.train.epochs <= 0:
        return cfg.train.steps
    from flowergan.data import read_manifest

    return total_steps(cfg, int(read_manifest(cfg.data.path)["num_samples"]))


def _scheduler(opts: SweepOptions, cfg: Config) -> ASHAScheduler | FIFOScheduler:
    if opts.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=max(_evaluations(cfg), opts.grace_period),
                         grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)


def _concurrency(cfg: Config, opts: SweepOptions) -> int:
    """Trials that fit the cluster at once: each needs `workers` x (cpus, gpus) per worker."""
    if opts.max_concurrent > 0:
        return opts.max_concurrent
    have = ray.cluster_resources()
    cc = cfg.cluster
    fits = [have.get("CPU", 0.0) / (cc.workers * cc.cpus_per_worker)]
    if cc.gpus_per_worker > 0:
        fits.append(have.get("GPU", 0.0) / (cc.workers * cc.gpus_per_worker))
    return max(1, int(min(fits) + 1e-9))


def _record(cfg: Config, params: list[Param], opts: SweepOptions) -> dict[str, Any]:
    """What a resumed sweep must match (the Ray address may differ: a resumed sweep may run on another head)."""
    config = cfg.to_dict()
    config["cluster"].pop("address")
    return {"config": config, "space": [dataclasses.asdict(p) for p in params],
            "num_samples": opts.num_samples, "scheduler": opts.scheduler}


def _check_state(out: Path, record: dict[str, Any], opts: SweepOptions) -> bool:
    """Whether to restore; one line when --resume and the sweep dir disagree."""
    path = out / EXPERIMENT
    exists = ray.tune.Tuner.can_restore(str(path))
    if opts.auto_resume and not exists:
        return False
    if opts.resume and not exists:
        raise UserError(f"--resume: {out} holds no sweep to resume (no Tune state in {path}); drop --resume")
    if exists and not (opts.resume or opts.auto_resume):
        raise UserError(f"{out} already holds a sweep; pass --resume to continue it, or choose a new --out")
    if exists:
        saved = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else None
        if saved != json.loads(json.dumps(record)):
            raise UserError(f"--resume: the sweep in {out} was started with another config, space or options "
                            "(see its sweep.json); resume it with those, or choose a new --out")
    return exists


def _prepare(cfg: Config, out: Path) -> Config:
    """The base config every trial starts from: absolute paths, trackers pointed at the sweep."""
    shared_storage = bool(cfg.cluster.storage_path)
    cfg = resolve_paths(cfg)
    # Each trial's storage: <cluster.storage_path>/sweeps/<sweep>/<trial>, or <out>/ray/<trial> (trial.py).
    cfg.cluster.storage_path = f"{cfg.cluster.storage_path.rstrip('/')}/sweeps/{out.name}" if shared_storage else ""
    cfg.log.run_dir = str(out / "runs")  # each trial's run dir is runs/<trial> (trial.py)
    if "mlflow" in backends(cfg.log) and not cfg.log.mlflow_uri:
        import os

        cfg.log.mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").as_uri()
    return from_dict(cfg.to_dict())


def run_sweep(cfg: Config, params: list[Param], opts: SweepOptions,
              make_evaluate: MakeEvaluate | None) -> list[R.TrialRow]:
    """Run (or resume) the sweep; writes results.csv/json into `opts.out`, prints the table, returns the rows."""
    evaluate = make_evaluate(cfg) if make_evaluate is not None else None
    if evaluate is None:
        raise UserError("eval.every is 0: a sweep ranks and stops trials by the in-training metric; "
                        "set eval.every > 0 (e.g. --set eval.every=500)")
    key, lower = evaluate.best_key, evaluate.lower_is_better
    check_installed(cfg.log)
    out = opts.out.expanduser().resolve()
    base = _prepare(cfg, out)
    record = _record(base, params, opts)
    restore = _check_state(out, record, opts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cfg.cluster.address or None, log_to_driver=True)
    try:
        trainable = ray.tune.with_parameters(run_trial, base=base.to_dict(), sweep_dir=str(out), score_key=key,
                                             make_evaluate=make_evaluate)
        # The trial is only the Train driver: its workers reserve the CPUs and GPUs (Train V2 places them itself),
        # so the trial asks for memory alone (Tune refuses an all-zero request).
        trainable = ray.tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_MEMORY})
        if restore:
            print(f"Resuming the sweep in {out}: finished trials are kept, unfinished ones continue", flush=True)
            tuner = ray.tune.Tuner.restore(str(out / EXPERIMENT), trainable=trainable, resume_unfinished=True,
                                           resume_errored=False, restart_errored=False)
        else:
            k = _concurrency(base, opts)
            n = grid_size(params) * opts.num_samples
            print(f"Sweep {out.name}: {n} trial(s), {k} at a time, scheduler {opts.scheduler} on {key} "
                  f"({'min' if lower else 'max'}). Space: {describe(params)}", flush=True)
            tuner = ray.tune.Tuner(
                trainable,
                param_space=_param_space(params),
                tune_config=ray.tune.TuneConfig(
                    metric=key, mode="min" if lower else "max", scheduler=_scheduler(opts, base),
                    num_samples=opts.num_samples, max_concurrent_trials=k,
                    trial_name_creator=lambda t: trial_name(t.trial_id, t.config),
                    trial_dirname_creator=lambda t: trial_name(t.trial_id, t.config)),
                run_config=ray.tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=1,
                                              failure_config=ray.tune.FailureConfig(max_failures=0)),
            )
        grid = tuner.fit()
        _mend_tracker_store(base, out)
        rows = [_row(grid[i], base, params, key, lower, out) for i in range(len(grid))]
    finally:
        if started_here:
            ray.shutdown()
    rows.sort(key=lambda r: r.trial)
    R.write_results(out, rows, key, lower)
    R.print_table(rows, key, lower, out)
    return rows


def _mend_tracker_store(base: Config, out: Path) -> None:
    """Trials Tune stopped or a killed driver took down may have died mid-write in MLflow's file store."""
    if "mlflow" in backends(base.log):
        own = base.log.mlflow_uri == (out / "mlruns").as_uri()  # nothing else writes there once the trials end
        mlflow_repair.report(mlflow_repair.repair_store(base.log.mlflow_uri, min_age_s=0.0 if own else 10.0))


def _error_line(error: BaseException) -> str:
    """The innermost message of a trial's error (Tune wraps it in its own): the last line that says something."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _row(result: Any, base: Config, params: list[Param], key: str, lower: bool, out: Path) -> R.TrialRow:
    """One trial's row from its Tune result (its progress has one line per evaluation)."""
    name = Path(result.path).name
    config = result.config
    if config is None:  # a trial that had failed before a restore comes back without its config
        params_file = Path(result.path) / "params.json"
        config = json.loads(params_file.read_text()) if params_file.is_file() else {}
    values = {p.field: config.get(p.field) for p in params}
    df = result.metrics_dataframe
    scores: list[tuple[int, float]] = []
    ckpts: dict[int, str] = {}
    if df is not None and key in df.columns and "step" in df.columns:
        for i in range(len(df)):
            step, value = int(df["step"].iloc[i]), float(df[key].iloc[i])
            scores.append((step, value))
            if "checkpoint_path" in df.columns and isinstance(df["checkpoint_path"].iloc[i], str):
                ckpts[step] = df["checkpoint_path"].iloc[i]
    finite = [s for s in scores if math.isfinite(s[1])]
    best = (min if lower else max)(finite, key=lambda s: s[1]) if finite else None
    metrics = result.metrics or {}
    last_step = int(metrics["step"]) if "step" in metrics else None
    try:
        steps: int | None = _total_steps(apply_params(base, values))
    except UserError:
        steps = None
    run_dir = run_dir_of(out, name)
    best_dir = run_dir / "checkpoints" / "best"
    checkpoint = str(best_dir) if best_dir.is_dir() else (ckpts.get(best[0], "") if best else "")
    error = _error_line(result.error) if result.error is not None else ""
    return R.TrialRow(trial=name, status=R.status_of(error, last_step, steps), values=values,
                      score=best[1] if best else None, score_step=best[0] if best else None, last_step=last_step,
                      steps=steps, run_dir=str(run_dir), checkpoint=checkpoint, error=error, scores=scores)
