"""Ray Train: the training loop in N workers (DDP over gloo or NCCL). The only train module that imports ray.

`run_ray(cfg)` starts a `TorchTrainer` whose workers each call `loop.train()`; rank 0 writes the run dir
(TensorBoard, samples, checkpoints) and every checkpoint is also reported to Ray Train, which copies it to
`cluster.storage_path/cluster.name/step-XXXXXXXX/` in the background while training goes on.
Resume: every start (a fresh job, a relaunched driver, a worker group restarted after a failure) continues from
the newest complete checkpoint it can find, wherever it is:
  - Ray storage: a restarted worker group, or a relaunched driver with the same name and storage path, gets the
    newest checkpoint Ray registered from `ray.train.get_checkpoint()` (ray-project/ray#45516);
  - the run dir: a crash between writing a checkpoint and Ray registering it leaves the run dir ahead of Ray
    storage. Its newest checkpoint wins when it is newer, so a relaunch never repeats steps or dead-ends.
A run dir whose newest checkpoint belongs to another run (another `cluster.name` or model) is only continued with
`--resume`. The global batch `train.batch_size` is split evenly across workers; learning rates are not rescaled.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import torch
from torch import nn

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.config import Config, from_dict
from flowergan.errors import UserError
from flowergan.train.faults import maybe_inject_fault
from flowergan.train.launch.consistency import check_ranks_agree, params_digest
from flowergan.train.state.checkpoints import CheckpointManager

try:  # Train V2 names (Ray >= 2.43, on by default since 2.60); V1 (RAY_TRAIN_V2_ENABLED=0) lacks them
    from ray.train import (
        Checkpoint,
        CheckpointConfig,
        CheckpointConsistencyMode,
        CheckpointUploadMode,
        FailureConfig,
        Result,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer
except ImportError:
    raise UserError(f"Ray {ray.__version__} runs Ray Train V1 here (RAY_TRAIN_V2_ENABLED="
                    f"{os.environ.get('RAY_TRAIN_V2_ENABLED', '')!r}); flowergan needs Train V2: unset "
                    "RAY_TRAIN_V2_ENABLED or set it to 1") from None

__all__ = ["params_digest", "resolve_paths", "run_ray", "stored_checkpoints"]

if TYPE_CHECKING:
    from flowergan.train.evaluation import Evaluate

MakeEvaluate = Callable[[Config], "Evaluate | None"]  # built in each worker (the CLI passes flowergan_eval's)

# Environment variables handed from the driver to every worker (fault hook, Inception weights, ...): workers
# on other nodes do not inherit the driver's environment.
ENV_PREFIXES = ("FLOWERGAN_",)
# GPU workers: NCCL for CUDA tensors (DDP's gradients, the loop's collectives) and gloo for any CPU tensor, so
# a collective on the wrong device still works instead of failing the job at its first call. Kept over plain
# "nccl" although Ray sets TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (a stuck NCCL collective fails the worker after
# the process-group timeout instead of hanging it) only when it recognises NCCL in the backend: Ray >= 2.60
# (the floor this package is tested with) checks each "device:backend" item (`_is_backend_nccl`), older ones
# compared `backend == "nccl"`. tests/test_ray_launch.py pins that, so a Ray that stops recognising the list
# fails a test rather than silently dropping the variable.
GPU_BACKEND = "cpu:gloo,cuda:nccl"


def _is_uri(path: str) -> bool:
    return "://" in path or path.startswith("pipe:")


def _absolute(path: str) -> str:
    """Workers may run in another directory (or on another node): give them absolute local paths."""
    return path if not path or _is_uri(path) else str(Path(path).expanduser().resolve())


def _remote_driver(cfg: Config) -> bool:
    """Ray Client (ray://): this process is not on the cluster, so its files are not the workers' files."""
    return cfg.cluster.address.startswith("ray://")


def resolve_paths(cfg: Config) -> Config:
    """A copy of `cfg` with local paths made absolute and `cluster.name`/`storage_path` filled in."""
    cfg = from_dict(cfg.to_dict())
    cfg.cluster.name = cfg.cluster.name or Path(cfg.log.run_dir).name or "flowergan"
    cfg.cluster.storage_path = cfg.cluster.storage_path or cfg.log.run_dir
    fields = {"log.run_dir": cfg.log, "data.path": cfg.data, "eval.data": cfg.eval,
              "eval.inception_weights": cfg.eval, "cluster.storage_path": cfg.cluster}
    for name, section in fields.items():
        key = name.split(".", 1)[1]
        value = getattr(section, key)
        if not _remote_driver(cfg):
            setattr(section, key, _absolute(value))
        elif value and not _is_uri(value) and not value.startswith("/"):
            raise UserError(f"{name}: {value!r} is relative, but with a ray:// address it is read on the cluster; "
                            "give an absolute path as the cluster's pods see it (or an s3:// / gs:// URI)")
    # eval.features may name a file (TorchScript, a SynthNet folder, or NAME=FILE): absolute, like the paths above.
    name, sep, file = cfg.eval.features.rpartition("=") if "=" in cfg.eval.features else ("", "", cfg.eval.features)
    if file not in ("", "inception", "synth") and not _remote_driver(cfg):
        cfg.eval.features = f"{name}{sep}{_absolute(file)}"
    return cfg


def stored_checkpoints(storage: str, name: str) -> list[str]:
    """Checkpoint directory names Ray Train has registered for run `name` in `storage` (oldest first)."""
    where = f"{storage.rstrip('/')}/{name}"
    try:
        result = Result.from_path(where)
    except RuntimeError:  # no such run folder, or no checkpoint registered in it yet
        return []
    except Exception as e:  # Ray's own: a record written by another Ray version, or cut short mid-write
        raise UserError(f"Ray storage {where} holds a run record that Ray {ray.__version__} cannot read "
                        f"({str(e).splitlines()[0][:200]}); choose a new cluster.name, or move that folder away "
                        "(the run dir's checkpoints are still used)") from None
    return sorted(PurePosixPath(ckpt.path).name for ckpt, _metrics in result.best_checkpoints or [])


def _other_run(ckpt: Path, cfg: Config) -> str | None:
    """Why checkpoint `ckpt` belongs to another run than `cfg` (another run name or model); None if it is ours."""
    try:
        stored = json.loads((ckpt / ckpt_io.STATE).read_text()).get("config", {})
    except (OSError, json.JSONDecodeError):
        return f"its {ckpt_io.STATE} cannot be read"
    name = stored.get("cluster", {}).get("name", "")
    if name != cfg.cluster.name:
        return f"it was trained as run {name!r}, this is run {cfg.cluster.name!r}"
    if stored.get("model") != json.loads(json.dumps(cfg.to_dict()["model"])):
        return "its [model] section differs from this run's"
    return None


def _launch_plan(cfg: Config, resume: bool) -> str:
    """Where the workers will start, as one line for the log: the newer of Ray storage's newest checkpoint and the
    run dir's newest intact one (what `CheckpointManager.resume_point` picks in the workers). Another run's
    checkpoints need --resume."""
    where = f"{cfg.cluster.storage_path.rstrip('/')}/{cfg.cluster.name}"
    in_storage = stored_checkpoints(cfg.cluster.storage_path, cfg.cluster.name)
    newest = in_storage[-1] if in_storage else None
    # The run dir's newest intact checkpoint, as the workers' resume point will take it (a damaged one is skipped).
    intact = None if _is_uri(cfg.log.run_dir) else \
        CheckpointManager(Path(cfg.log.run_dir) / "checkpoints").newest_intact()[0]
    local = [intact] if intact is not None else []
    if not local or ckpt_io.step_of(local[-1]) <= ckpt_io.step_of(newest):
        if newest:
            return f"Resuming from {newest} in {where} (Ray storage)"
        return f"Starting at step 0: no checkpoint in {where} or in {cfg.log.run_dir}/checkpoints"
    other = _other_run(local[-1], cfg)
    if other and not resume:
        raise UserError(f"{local[-1]} is not this run's checkpoint ({other}); pass --resume to continue from "
                        "it anyway, or choose a new --run-dir")
    if other:
        why = f"--resume: {other}"
    else:
        ahead = f"newer than Ray storage's newest, {newest}" if newest else "Ray storage has none"
        why = f"{ahead}: the last run stopped between saving it and Ray storing it"
    return f"Resuming from {local[-1].name} in {local[-1].parent} ({why})"


def _check_data(cfg: Config) -> None:
    """Pre-flight of the data as rank 0 will see it (manifest, resolution, shards per reader): a bad path fails
    here in a second instead of in every worker, max_failures times over. Cached streams are checked by the
    workers themselves (their memory, not the driver's, is what counts)."""
    from flowergan.data import build_stream, read_manifest

    if cfg.data.cache == "none" or (cfg.data.cache == "auto" and cfg.cluster.gpus_per_worker == 0):  # CPU: none
        build_stream(cfg.data, batch_size=cfg.train.batch_size // cfg.cluster.workers,
                     resolution=cfg.model.resolution, rank=0, world_size=cfg.cluster.workers, seed=cfg.train.seed)
    else:
        read_manifest(cfg.data.path)


def _check_launch(cfg: Config, resume: bool) -> str:
    """Everything the driver can check before any worker starts; returns the line saying where training starts."""
    plan = _launch_plan(cfg, resume)
    _check_data(cfg)
    return plan


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def _check_devices(cfg: Config) -> None:
    gpus, device = cfg.cluster.gpus_per_worker, cfg.train.device
    if device == "cuda" and gpus == 0:
        raise UserError("train.device is 'cuda' but cluster.gpus_per_worker is 0: pass --gpus-per-worker 1")
    if device == "cpu" and gpus > 0:
        raise UserError(f"train.device is 'cpu' but each worker reserves {gpus:g} GPU(s): use --device auto, or "
                        "--gpus-per-worker 0 for CPU workers")


def run_ray(cfg: Config, *, resume: bool, make_evaluate: MakeEvaluate | None = None,
            callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train with `cfg.cluster.workers` Ray Train workers; returns rank 0's metrics at the last checkpoint.

    Every start continues from the newest complete checkpoint in Ray storage or the run dir (that is how a
    retried job resumes, with or without `--resume`). `resume=True` is only needed to continue from a run dir
    whose newest checkpoint belongs to another run (another `cluster.name` or model, e.g. a plain local run).
    `make_evaluate(cfg)` builds the in-training evaluation in each worker, from the paths as the workers see them.
    `callbacks` go to the trainer's RunConfig (a Tune trial passes the one that forwards reports to Tune).
    """
    _check_devices(cfg)
    cfg = resolve_paths(cfg)
    cc = cfg.cluster
    # Through Ray Client the driver's files are not the cluster's: storage and data are checked by the workers.
    plan = _check_launch(cfg, resume) if not _remote_driver(cfg) else \
        f"the workers look for checkpoints in {cc.storage_path.rstrip('/')}/{cc.name} and {cfg.log.run_dir}"
    use_gpu = cc.gpus_per_worker > 0
    resources = {"CPU": cc.cpus_per_worker, **({"GPU": cc.gpus_per_worker} if use_gpu else {})}

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cc.address or None, log_to_driver=True)
    try:
        print(f"Ray Train: {cc.workers} worker(s) x {resources}, run '{cc.name}'. {plan}", flush=True)
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"config": cfg.to_dict(), "make_evaluate": make_evaluate},
            torch_config=TorchConfig(backend=GPU_BACKEND if use_gpu else "gloo", timeout_s=cc.pg_timeout_s),
            scaling_config=ScalingConfig(num_workers=cc.workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(
                name=cc.name,
                storage_path=cc.storage_path,
                failure_config=FailureConfig(max_failures=cc.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cc.num_to_keep),
                worker_runtime_env={"env_vars": _worker_env()},
                callbacks=list(callbacks),
            ),  # type: ignore[call-arg]  # mypy reads ray.train's Train V1 RunConfig; V2 (2.60's default) has it
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise _explain(e) from None
    finally:
        if started_here:
            ray.shutdown()
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None:
        metrics["Ray/checkpoint"] = result.checkpoint.path
    return metrics


def _explain(error: Exception) -> Exception:
    """A worker's UserError becomes one line for the CLI; anything else keeps its traceback."""
    failures = getattr(error, "worker_failures", {}) or {}
    for rank, failure in sorted(failures.items()):
        cause = failure
        while cause is not None and not isinstance(cause, UserError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, UserError):
            return UserError(f"Ray Train worker {rank}: {cause}")
    return error


# --------------------------------------------------------------------------------------------------------
# Inside every Ray Train worker.


def _upload_mode(cfg: Config) -> CheckpointUploadMode:
    """Upload to Ray storage in the background while training goes on, unless the run dir keeps one checkpoint:
    rank 0 then deletes the previous checkpoint while saving the next, possibly under a running upload."""
    return CheckpointUploadMode.ASYNC if cfg.train.keep_checkpoints >= 2 else CheckpointUploadMode.SYNC


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the config, find the resume point, run the loop, report checkpoints."""
    from flowergan.train.loop import train

    cfg = from_dict(config["config"])
    if cfg.cluster.gpus_per_worker > 0:
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    rank = ray.train.get_context().get_world_rank()
    upload = _upload_mode(cfg)

    def on_checkpoint(step: int, path: Path | None, metrics: dict[str, float], nets: dict[str, nn.Module]) -> None:
        # Every rank reports the same number of times; only rank 0 has a directory to upload. Each report
        # carries every rank's hash of its plain G and D (compiled or not): equal hashes prove DDP kept the ranks
        # in step; unequal ones stop every rank before anything is reported (a retry resumes from the last
        # checkpoint the ranks agreed on).
        digests = check_ranks_agree(step, path, nets, device)
        maybe_inject_fault(step, rank, point="saved")
        if path is not None and upload is CheckpointUploadMode.ASYNC:
            # At most one upload in flight: the previous one is done before this one starts, so the checkpoint
            # rank 0 prunes at its next save (never the newest two) has reached Ray storage.
            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        ckpt = Checkpoint.from_directory(str(path)) if path is not None else None
        ray.train.report({"step": step, **metrics, "Check/params_digest": digests}, checkpoint=ckpt,
                         checkpoint_dir_name=path.name if path is not None else None,
                         checkpoint_upload_mode=upload, delete_local_checkpoint_after_upload=False)

    with contextlib.ExitStack() as stack:
        restored = ray.train.get_checkpoint()
        manager = CheckpointManager(Path(cfg.log.run_dir) / "checkpoints")
        start = manager.resume_point(device, restored=restored.path if restored is not None else None)
        resume_from = None
        if start is not None:
            in_ray = restored is not None and start == restored.path
            resume_from = Path(stack.enter_context(restored.as_directory())) if in_ray else Path(start)
            if rank == 0:
                print(f"rank 0: resuming from {start} ({'Ray storage' if in_ray else 'the run dir'})", flush=True)
        make_evaluate = config.get("make_evaluate")
        train(cfg, resume=resume_from is not None, resume_from=resume_from, device=device,
              on_checkpoint=on_checkpoint, evaluate=make_evaluate(cfg) if make_evaluate is not None else None)
