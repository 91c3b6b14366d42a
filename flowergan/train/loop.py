"""The training loop: the same code as a plain process (CPU or one GPU) and as a DDP / Ray Train worker.

It knows nothing of Ray: `ray_train.py` calls `train()` in every worker with an `on_checkpoint` callback.
Host syncs happen only at log, sample, checkpoint and evaluation intervals.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from flowergan import visuals
from flowergan.config import Config
from flowergan.data.batches import BatchStream
from flowergan.devices import pick_device
from flowergan.errors import UserError
from flowergan.generation import for_sampling, recompute_bn_stats
from flowergan.models import build_models
from flowergan.train import checkpoint as ckpt_io
from flowergan.train import distributed as dist
from flowergan.train.evaluation import Evaluate, improves, initial_best
from flowergan.train.faults import maybe_inject_fault
from flowergan.train.logging import NullLogger, RunLogger
from flowergan.train.report import TrainProgress
from flowergan.train.step import Precision, Targets, ema_decay_at, ema_update, gan_step, r1_weight, resolve_amp

LOGGED = ("Loss/D", "Loss/G", "D/real", "D/fake_before", "D/fake_after")
OnCheckpoint = Callable[[int, "Path | None", dict[str, float]], None]


def total_steps(cfg: Config, num_samples: int) -> int:
    """`train.steps`, or `train.epochs` converted with the data set size and the global batch."""
    if cfg.train.epochs > 0:
        return max(1, math.ceil(cfg.train.epochs * num_samples / cfg.train.batch_size / cfg.train.d_steps))
    return cfg.train.steps


def _prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"log.run_dir: cannot write to {run_dir} ({e.strerror}); choose another --run-dir") from None


@dataclass
class _Snapshot:
    """The last good state kept in memory on every rank, so a non-finite loss rolls back without disk."""

    step: int = 0
    images_seen: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def take(cls, step: int, images_seen: int, objs: dict[str, Any]) -> _Snapshot:
        return cls(step, images_seen, {k: copy.deepcopy(v.state_dict()) for k, v in objs.items()})

    def restore(self, objs: dict[str, Any]) -> None:
        for k, v in objs.items():
            v.load_state_dict(self.state[k])


def train(cfg: Config, *, resume: bool = False, resume_from: Path | None = None, device: torch.device | None = None,
          on_checkpoint: OnCheckpoint | None = None, stream: BatchStream | None = None,
          evaluate: Evaluate | None = None) -> dict[str, float]:
    """Train G and D as `cfg` says; returns the last logged metrics. See the module docstring."""
    rank, world = dist.rank(), dist.world_size()
    device = device or pick_device(cfg.train.device, "train.device")
    tc, oc = cfg.train, cfg.optim
    per_rank_batch = tc.batch_size // world
    run_dir = Path(cfg.log.run_dir)
    ckpt_root = run_dir / "checkpoints"

    if rank == 0:
        _prepare_run_dir(run_dir)
    if resume_from is None:
        existing = ckpt_io.list_checkpoints(ckpt_root)
        if existing and not resume:
            raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue from "
                            f"{existing[-1].name}, or choose a new --run-dir")
        resume_from = existing[-1] if existing and resume else None

    # Models: identical init on every rank (DDP also broadcasts rank 0's weights).
    torch.manual_seed(tc.seed)
    G, D = build_models(cfg.model)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if tc.ema else None
    memory_format = torch.channels_last if tc.channels_last else torch.preserve_format
    for m in (G, D, G_ema):
        if m is not None:
            m.to(device).to(memory_format=memory_format)
    fused = oc.fused == "on" or (oc.fused == "auto" and device.type == "cuda")
    # Fused kernels on CUDA; elsewhere the multi-tensor (foreach) path, which PyTorch enables only on CUDA.
    adam: dict[str, Any] = {"betas": (oc.beta1, oc.beta2), **({"fused": True} if fused else {"foreach": True})}
    opt_g = torch.optim.Adam(G.parameters(), lr=oc.lr_g, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=oc.lr_d, **adam)
    precision = Precision(device, *resolve_amp(tc.amp, device))
    nets = {"G": G, "D": D, **({"G_ema": G_ema} if G_ema is not None else {})}
    stateful = {**nets, "opt_g": opt_g, "opt_d": opt_d, "scaler": precision.scaler}

    # Noise and augmentation draw from torch's global RNG, seeded per rank; resume restores it exactly.
    torch.manual_seed(tc.seed * 1_000_003 + rank + 1)
    step, images_seen = 0, 0
    if resume_from is not None:
        state = ckpt_io.load_state(Path(resume_from), cfg, nets, {"opt_g": opt_g, "opt_d": opt_d},
                                   precision.scaler, device)
        step, images_seen = int(state["step"]), int(state["images_seen"])
        if rank != 0:  # each rank continues its own noise sequence rather than rank 0's
            torch.manual_seed(tc.seed * 1_000_003 + rank + 1 + step)

    if stream is None:
        from flowergan.data import build_stream

        stream = build_stream(cfg.data, batch_size=per_rank_batch, resolution=cfg.model.resolution,
                              rank=rank, world_size=world, seed=tc.seed, device=device)
    num_samples, batches_per_epoch = stream.num_samples, stream.batches_per_epoch
    steps = total_steps(cfg, num_samples)

    G_train = dist.wrap(G, device, cfg.cluster.sync_batchnorm)
    D_train = dist.wrap(D, device, cfg.cluster.sync_batchnorm)
    if tc.compile:
        # torch.compile returns an OptimizedModule (an nn.Module), typed as a plain callable.
        G_train, D_train = cast(nn.Module, torch.compile(G_train)), cast(nn.Module, torch.compile(D_train))
    augment = None
    if tc.diffaugment:
        from flowergan.train.augment import make_augment

        augment = make_augment(tc.diffaugment)
    targets = Targets(tc.real_label, tc.fake_label, tc.g_target)

    log = RunLogger(run_dir, cfg.log.tensorboard, start_step=step) if rank == 0 else NullLogger()
    if rank == 0:
        (run_dir / "config.toml").write_text(cfg.to_toml())
    z_fixed = torch.randn(cfg.log.n_samples, cfg.model.nz, generator=torch.Generator().manual_seed(tc.seed)).to(device)

    def sample_grids(at: int) -> None:
        if rank != 0:
            return
        with torch.no_grad():
            for tag, net in (("ema", G_ema), ("raw", G)):
                if net is None:
                    continue
                was_training = net.training
                net.eval()
                grid = visuals.to_grid(for_sampling(net, cfg.model.g_sample_bn)(z_fixed))
                net.train(was_training)
                visuals.save_png(grid, run_dir / "samples" / f"{tag}-{at:08d}.png")
                log.image(f"Samples/{tag}", at, grid)

    def save(at: int, metrics: dict[str, float], best: bool) -> Path | None:
        path = None
        if G_ema is not None and cfg.model.g_sample_bn == "batch":
            recompute_bn_stats(G_ema)  # training-neutral: ema_update overwrites G_ema's buffers every step
        if rank == 0:
            optim_state = {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                           "scaler": precision.scaler.state_dict(), "rng": ckpt_io.rng_state()}
            state = {"images_seen": images_seen, "epoch": images_seen / max(num_samples, 1),
                     "config": cfg.to_dict(), "metrics": metrics}
            path = ckpt_io.save_checkpoint(ckpt_root, step=at, models=nets, optim=optim_state, state=state)
            if best:
                ckpt_io.mark_best(path)
            ckpt_io.prune(ckpt_root, tc.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint(at, path, metrics)  # every rank, the same number of times (Ray Train requires it)
        return path

    # Accumulators live on the device; they are read (one sync) only at log intervals.
    acc = torch.zeros(len(LOGGED), device=device)
    epoch_acc = torch.zeros(len(LOGGED), device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    acc_n = epoch_acc_n = 0
    last_metrics: dict[str, float] = {}
    best_value = initial_best(evaluate)
    retries = 0
    snapshot = _Snapshot.take(step, images_seen, stateful)

    batches = iter(stream.iter_from(step * tc.d_steps))
    if rank == 0 and step == 0:
        sample_grids(0)
    progress = TrainProgress(steps, step, enabled=cfg.log.progress and rank == 0)
    progress.start()
    t_log, images_at_log = time.perf_counter(), images_seen
    try:
        while step < steps:
            reals, zs = [], []
            for _ in range(tc.d_steps):
                x, _labels = next(batches)
                reals.append(x.to(device, non_blocking=True, memory_format=memory_format))
                zs.append(torch.randn(x.shape[0], cfg.model.nz, device=device))
            out = gan_step(G_train, D_train, opt_g, opt_d, reals, zs, precision, targets, augment,
                           r1=r1_weight(step, tc.r1_gamma, tc.r1_every))
            if G_ema is not None:
                # Warm-up: early on G_ema follows G closely, so short runs do not show mostly the random init.
                ema_update(G_ema, G, ema_decay_at(step, tc.ema_decay, tc.ema_warmup))
            values = torch.stack([out.loss_d, out.loss_g, out.d_real, out.d_fake_before, out.d_fake_after])
            finite &= torch.isfinite(values[:2]).all()
            acc += values
            epoch_acc += values
            acc_n += 1
            epoch_acc_n += 1
            step += 1
            images_seen += tc.batch_size * tc.d_steps
            progress.advance()
            maybe_inject_fault(step, rank)

            ckpt_due = step % tc.checkpoint_every == 0 or step == steps
            eval_due = evaluate is not None and cfg.eval.every > 0 and (step % cfg.eval.every == 0 or step == steps)
            log_due = step % cfg.log.every == 0 or step == steps or ckpt_due or eval_due
            epoch_end = (step * tc.d_steps) % batches_per_epoch < tc.d_steps
            if not (log_due or epoch_end):
                continue

            # One host sync: are the losses finite on every rank since the last check?
            if not dist.all_true(finite):
                retries += 1
                progress.say(f"non-finite loss between steps {snapshot.step} and {step}: rolling back to "
                                  f"step {snapshot.step} (retry {retries} of {tc.nan_retries})")
                if retries > tc.nan_retries:
                    raise UserError(f"non-finite loss persisted after {tc.nan_retries} rollbacks at step {step}; "
                                    "lower optim.lr_d / optim.lr_g or set train.amp=off")
                snapshot.restore(stateful)
                step, images_seen = snapshot.step, snapshot.images_seen
                # New noise so the retry does not replay the exact same divergence.
                torch.manual_seed(tc.seed * 1_000_003 + rank + 1 + 7919 * retries)
                batches = iter(stream.iter_from(step * tc.d_steps))
                acc.zero_(), epoch_acc.zero_(), finite.fill_(True)
                acc_n = epoch_acc_n = 0
                progress.rewind(step)
                continue

            if log_due:
                means = (dist.mean_across(acc) / max(acc_n, 1)).tolist()
                now = time.perf_counter()
                last_metrics = dict(zip(LOGGED, means))
                last_metrics["Speed/img_per_s"] = (images_seen - images_at_log) / max(now - t_log, 1e-9)
                last_metrics["LR/G"] = opt_g.param_groups[0]["lr"]
                last_metrics["LR/D"] = opt_d.param_groups[0]["lr"]
                last_metrics["Progress/images_seen"] = images_seen
                log.scalars(step, last_metrics)
                t_log, images_at_log = now, images_seen
                acc.zero_()
                acc_n = 0
                progress.log(step, last_metrics)
            if epoch_end:
                epoch = (step * tc.d_steps) // batches_per_epoch
                em = (dist.mean_across(epoch_acc) / max(epoch_acc_n, 1)).tolist()
                log.scalars(step, {"epoch": epoch, "Epoch/Loss_D": em[0], "Epoch/Loss_G": em[1],
                                   "Epoch/D_real": em[2], "Epoch/D_fake_after": em[4]})
                epoch_acc.zero_()
                epoch_acc_n = 0
            if step % cfg.log.sample_every == 0 or step == steps:
                sample_grids(step)
            is_best = False
            if eval_due:
                sampler = for_sampling(G_ema or G, cfg.model.g_sample_bn)
                scores = evaluate(sampler, device) if rank == 0 and evaluate is not None else {}
                last_metrics.update(scores)
                log.scalars(step, {f"Eval/{k}": v for k, v in scores.items()})
                if evaluate is not None and improves(evaluate, scores, best_value):
                    is_best, best_value = True, scores[evaluate.best_key]
            if ckpt_due or eval_due:
                save(step, dict(last_metrics), is_best)
                snapshot = _Snapshot.take(step, images_seen, stateful)
                retries = 0
    finally:
        progress.stop()
        log.close()
    if rank == 0:
        frames = sorted((run_dir / "samples").glob("ema-*.png")) or sorted((run_dir / "samples").glob("raw-*.png"))
        visuals.save_gif(frames, run_dir / "progress.gif")
        visuals.plot_losses(run_dir / "metrics.jsonl", run_dir / "losses.png")
    return last_metrics

