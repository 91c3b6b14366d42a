"""Ray Train: the training loop in N workers (DDP over gloo or NCCL). The only module that imports ray.

`run_ray(cfg)` starts a `TorchTrainer` whose workers each call `loop.train()`; rank 0 writes the run dir
(TensorBoard, samples, checkpoints) and every checkpoint is also reported to Ray Train, which copies it to
`cluster.storage_path/cluster.name/step-XXXXXXXX/`. Resume, in order of preference:
  1. Ray's own restore: a worker group restarted after a failure (in-run), or a relaunched driver with the
     same name and storage path (Ray Train V2 reloads `checkpoint_manager_snapshot.json` from storage,
     ray-project/ray#45516), gets that checkpoint from `ray.train.get_checkpoint()`.
  2. Otherwise the newest complete checkpoint in `log.run_dir` (a local run continued with `--ray --resume`,
     or a crash between writing a checkpoint and reporting it). Rank 0 picks it and every rank must see it.
The global batch `train.batch_size` is split evenly across workers; learning rates are not rescaled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import torch
import torch.distributed
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from flowergan.config import Config, from_dict
from flowergan.errors import UserError
from flowergan.models import Discriminator, Generator
from flowergan.train import checkpoint as ckpt_io

if TYPE_CHECKING:
    from flowergan.train.loop import Evaluate

MakeEvaluate = Callable[[Config], "Evaluate | None"]  # built in each worker (the CLI passes flowergan_eval's)

# Environment variables handed from the driver to every worker (fault hook, Inception weights, ...): workers
# on other nodes do not inherit the driver's environment.
ENV_PREFIXES = ("FLOWERGAN_",)
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of reported checkpoints


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
    return cfg


def _read_text(storage: str, relpath: str) -> str | None:
    """A small file from local or remote (s3://, gs://) storage; None if it does not exist."""
    if not _is_uri(storage):
        p = Path(storage, relpath)
        return p.read_text() if p.is_file() else None
    import pyarrow.fs  # a Ray Train dependency; the same filesystem layer Ray uses for storage

    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    path = f"{root.rstrip('/')}/{relpath}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def stored_checkpoints(storage: str, name: str) -> list[str]:
    """Checkpoint directory names Ray Train has registered for run `name` in `storage` (oldest first)."""
    text = _read_text(storage, f"{name}/{SNAPSHOT}")
    if not text:
        return []
    try:
        results = json.loads(text).get("checkpoint_results", [])
    except json.JSONDecodeError:
        return []
    return sorted(r["checkpoint_dir_name"] for r in results if isinstance(r, dict) and r.get("checkpoint_dir_name"))


def _check_launch(cfg: Config, resume: bool) -> list[str]:
    """Refuse to silently mix runs: a run dir with checkpoints but nothing in Ray storage needs --resume."""
    in_storage = stored_checkpoints(cfg.cluster.storage_path, cfg.cluster.name)
    local = ckpt_io.list_checkpoints(Path(cfg.log.run_dir) / "checkpoints") if not _is_uri(cfg.log.run_dir) else []
    if local and not in_storage and not resume:
        raise UserError(f"{cfg.log.run_dir} already holds checkpoints ({local[-1].name}) that Ray storage "
                        f"{cfg.cluster.storage_path}/{cfg.cluster.name} does not know; pass --resume to continue "
                        "from them, or choose a new --run-dir")
    # Pre-flight of the data as rank 0 will see it (manifest, resolution, shards per reader): a bad path fails
    # here in a second instead of in every worker, max_failures times over. Cached streams are checked by the
    # workers themselves (their memory, not the driver's, is what counts).
    from flowergan.data import build_stream, read_manifest

    if cfg.data.cache == "none":
        build_stream(cfg.data, batch_size=cfg.train.batch_size // cfg.cluster.workers,
                     resolution=cfg.model.resolution, rank=0, world_size=cfg.cluster.workers, seed=cfg.train.seed)
    else:
        read_manifest(cfg.data.path)
    return in_storage


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def _check_devices(cfg: Config) -> None:
    gpus, device = cfg.cluster.gpus_per_worker, cfg.train.device
    if device == "cuda" and gpus == 0:
        raise UserError("train.device is 'cuda' but cluster.gpus_per_worker is 0: pass --gpus-per-worker 1")
    if device == "cpu" and gpus > 0:
        raise UserError(f"train.device is 'cpu' but each worker reserves {gpus:g} GPU(s): use --device auto, or "
                        "--gpus-per-worker 0 for CPU workers")


def run_ray(cfg: Config, *, resume: bool, make_evaluate: MakeEvaluate | None = None) -> dict[str, Any]:
    """Train with `cfg.cluster.workers` Ray Train workers; returns rank 0's metrics at the last checkpoint.

    A run whose name already has checkpoints in `cluster.storage_path` always continues from the newest (that
    is how a retried job resumes). `resume=True` is only needed to continue from checkpoints that exist in
    `log.run_dir` but not in Ray storage (e.g. a run trained without Ray); without it such a run dir is an error.
    `make_evaluate(cfg)` builds the in-training evaluation in each worker, from the paths as the workers see them.
    """
    _check_devices(cfg)
    cfg = resolve_paths(cfg)
    cc = cfg.cluster
    # Through Ray Client the driver's files are not the cluster's: storage and data are checked by the workers.
    in_storage = _check_launch(cfg, resume) if not _remote_driver(cfg) else []
    use_gpu = cc.gpus_per_worker > 0
    resources = {"CPU": cc.cpus_per_worker, **({"GPU": cc.gpus_per_worker} if use_gpu else {})}

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cc.address or None, log_to_driver=True)
    try:
        where = f"{cc.storage_path.rstrip('/')}/{cc.name}"
        if _remote_driver(cfg):
            note = "the workers look for checkpoints there"
        else:
            note = f"resuming from {in_storage[-1]}" if in_storage else "no checkpoint there yet"
        print(f"Ray Train: {cc.workers} worker(s) x {resources}, run '{cc.name}' in {where} ({note})", flush=True)
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"config": cfg.to_dict(), "env": _worker_env(), "make_evaluate": make_evaluate},
            scaling_config=ScalingConfig(num_workers=cc.workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(
                name=cc.name,
                storage_path=cc.storage_path,
                failure_config=FailureConfig(max_failures=cc.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cc.num_to_keep),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise _explain(e) from None
    finally:
        if started_here:
            ray.shutdown()
    metrics = dict(result.metrics or {})
    digests = metrics.get("Check/params_digest", [])
    if len(set(digests)) > 1:
        print(f"warning: G/D parameters differ across ranks at the last checkpoint: {digests}", file=sys.stderr)
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


class _DDPModules:
    """Finds the DDP-wrapped G and D the loop builds (a global forward pre-hook that removes itself once it has
    seen both), so every checkpoint report can prove that all ranks hold the same parameters."""

    def __init__(self) -> None:
        self.found: list[nn.Module] = []
        self.handle = nn.modules.module.register_module_forward_pre_hook(self._see)

    def _see(self, module: nn.Module, args: Any) -> None:
        if isinstance(module, nn.parallel.DistributedDataParallel) and all(m is not module for m in self.found):
            self.found.append(module)
            if len(self.found) == 2:
                self.close()

    def digest(self) -> str:
        """Hash of this rank's G and D parameters ('' before both have run)."""
        tags = {Generator: "G", Discriminator: "D"}
        named = [(f"{tags[type(m.module)]}.{n}", p) for m in self.found if type(m.module) in tags
                 for n, p in m.module.named_parameters()]
        return params_digest(named) if len(self.found) == 2 else ""

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def params_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over parameter names and exact bytes (BatchNorm buffers differ per rank by design: excluded)."""
    h = hashlib.sha256()
    for name, p in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _local_resume_point(run_dir: Path) -> Path | None:
    """The newest checkpoint in the run dir as rank 0 sees it, agreed on by every rank (or a clear error)."""
    pick = [None]
    if torch.distributed.get_rank() == 0:
        found = ckpt_io.list_checkpoints(run_dir / "checkpoints")
        pick = [str(found[-1]) if found else None]
    torch.distributed.broadcast_object_list(pick, src=0)
    path = Path(pick[0]) if pick[0] else None
    visible = torch.tensor([1 if path is None or path.is_dir() else 0])
    torch.distributed.all_reduce(visible, op=torch.distributed.ReduceOp.MIN)
    if not visible.item():
        raise UserError(f"checkpoint {path} in log.run_dir is not visible on every worker; put log.run_dir on "
                        "storage shared by all nodes (the PVC) or resume from cluster.storage_path")
    return path


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the config, find the resume point, run the loop, report checkpoints."""
    os.environ.update(config["env"])
    from flowergan.train.loop import train  # after the env is set: the fault hook reads it

    cfg = from_dict(config["config"])
    if cfg.cluster.gpus_per_worker > 0:
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    ddp = _DDPModules() if not cfg.train.compile else None  # global hooks and torch.compile do not mix

    def on_checkpoint(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        # Every rank reports the same number of times; only rank 0 has a directory to upload. Each report
        # carries every rank's hash of its G and D parameters: equal hashes prove DDP kept the ranks in step.
        digests = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(digests, ddp.digest() if ddp is not None else "")
        ckpt = Checkpoint.from_directory(str(path)) if path is not None else None
        ray.train.report({"step": step, **metrics, "Check/params_digest": digests}, checkpoint=ckpt,
                         checkpoint_dir_name=path.name if path is not None else None)

    with contextlib.ExitStack() as stack:
        restored = ray.train.get_checkpoint()
        if restored is not None:
            resume_from: Path | None = Path(stack.enter_context(restored.as_directory()))
        else:
            resume_from = _local_resume_point(Path(cfg.log.run_dir))
        if resume_from is not None and ray.train.get_context().get_world_rank() == 0:
            print(f"rank 0: resuming from {resume_from}", flush=True)
        make_evaluate = config.get("make_evaluate")
        train(cfg, resume=resume_from is not None, resume_from=resume_from, device=device,
              on_checkpoint=on_checkpoint, evaluate=make_evaluate(cfg) if make_evaluate is not None else None)
    if ddp is not None:
        ddp.close()
