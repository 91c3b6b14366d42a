"""The training loop: the same code as a plain process (CPU or one GPU) and as a DDP worker (torchrun, Ray Train).

It knows nothing of Ray or of launchers: `launch/ray_train.py` and the CLI call `train()` in every rank, with an
`on_checkpoint` callback. Host syncs happen only at log, sample, checkpoint and evaluation intervals.
The pieces: `gan/step.gan_step` (one step), `state/train_state.TrainState` (what a checkpoint holds),
`state/checkpoints.CheckpointManager` (save, keep, roll back, resume, load), `observe/meters.Meters` (device-side
running means), `schedule.Schedule` (what is due after a step), `observe/samples.SampleWriter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flowergan.config import Config, with_classes
from flowergan.data.loader.protocol import BatchStream, LabelledStream
from flowergan.devices import normalize, pick_device
from flowergan.errors import UserError
from flowergan.generation import for_sampling, recompute_bn_stats
from flowergan.progress import TrainProgress
from flowergan.train import distributed as dist
from flowergan.train.evaluation import Evaluate, improves, initial_best
from flowergan.train.faults import maybe_inject_fault
from flowergan.train.gan.compiling import compile_nets, cudnn_autotune, pick_memory_format
from flowergan.train.gan.labels import FakeClasses
from flowergan.train.gan.losses import Loss
from flowergan.train.gan.step import StepOutput, ema_decay_at, ema_update, gan_step, lr_factor, r1_weight
from flowergan.train.observe.logs import NullLogger
from flowergan.train.observe.meters import LOGGED, Meters, logged
from flowergan.train.observe.samples import SampleWriter
from flowergan.train.observe.trackers import open_run_logger
from flowergan.train.schedule import Schedule
from flowergan.train.state import rng
from flowergan.train.state.checkpoints import CheckpointManager, OnCheckpoint
from flowergan.train.state.train_state import TrainState, new_state

__all__ = ["LOGGED", "OnCheckpoint", "total_steps", "train"]
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def train(cfg: Config, *, resume: bool = False, resume_from: Path | None = None, device: torch.device | None = None,
          on_checkpoint: OnCheckpoint | None = None, stream: BatchStream | None = None,
          evaluate: Evaluate | None = None) -> dict[str, float]:
    """Train G and D as `cfg` says; returns the last logged metrics. See the module docstring."""
    rank, world = dist.rank(), dist.world_size()
    device = normalize(device) if device is not None else pick_device(cfg.train.device, "train.device")
    tc, run_dir = cfg.train, Path(cfg.log.run_dir)
    asked_to_resume = resume and resume_from is None  # `--resume`, not a launcher's own restart (Ray Train's)
    if tc.batch_size % world:
        raise UserError(f"train.batch_size: {tc.batch_size} does not split evenly across {world} ranks")
    cfg = _with_data_classes(cfg, stream)  # a conditional model's num_classes and class names, before anything saves
    if rank == 0:
        _prepare_run_dir(run_dir)
    ckpts = CheckpointManager(run_dir / "checkpoints", keep=tc.keep_checkpoints, meta={"config": cfg.to_dict()},
                              retries=tc.nan_retries, seed=tc.seed, on_checkpoint=on_checkpoint)
    if resume_from is None:  # rank 0's newest intact checkpoint in the run dir (which must be asked for)
        start = ckpts.resume_point(device, resume=resume)
        resume_from = Path(start) if start is not None else None

    memory_format = pick_memory_format(tc, device)
    state = new_state(cfg, device, memory_format, initial_best(evaluate))
    rng.reseed(tc.seed, rank)  # noise and augmentation: one stream per rank, from torch's global RNG
    if resume_from is not None:
        ckpts.load(Path(resume_from), cfg, state)
    stream = stream or _build_stream(cfg, rank, world, device)
    steps = total_steps(cfg, stream.num_samples)
    if asked_to_resume and state.step >= steps:
        raise UserError(f"--resume: {run_dir} is already at step {state.step} of {steps}; raise train.steps (e.g. "
                        f"--set train.steps={2 * steps}) or train.epochs to train further")
    schedule = Schedule.of(cfg, steps, stream.batches_per_epoch, evaluate is not None)

    G_train = dist.wrap(state.G, device, cfg.cluster.sync_batchnorm)
    # D's BatchNorm statistics stay per rank: D always trains in train mode (batch statistics), so they never
    # enter a loss, and DDP's broadcast of them would overwrite tensors D's first call of a step saved.
    D_train = dist.wrap(state.D, device, cfg.cluster.sync_batchnorm, broadcast_buffers=False)
    D_r1 = D_train  # R1's double backward runs through D uncompiled (see gan_step)
    G_train, D_train = compile_nets(G_train, D_train, tc, device)
    fake_classes = FakeClasses(stream.class_counts, tc.fake_classes, device) \
        if cfg.model.conditional != "none" and isinstance(stream, LabelledStream) else None
    one_step = _Step(cfg, state, G_train, D_train, D_r1, memory_format, steps, fake_classes)

    log = open_run_logger(cfg, run_dir, start_step=state.step) if rank == 0 else NullLogger()
    if rank == 0:
        (run_dir / "config.toml").write_text(cfg.to_toml())
    samples = SampleWriter.fixed(run_dir, log, cfg.model, cfg.log.n_samples, tc.seed, device, enabled=rank == 0)
    ckpts.attach(state, stream.num_samples)
    meters = Meters(device, state.images_seen, logged(tc.loss))
    progress = TrainProgress(steps, state.step, enabled=cfg.log.progress and rank == 0)
    batches = iter(stream.iter_from(state.step * tc.d_steps))
    metrics: dict[str, float] = {}
    if state.step == 0:
        samples.write(0, state.G, state.G_ema)
    progress.start()
    try:
        while state.step < steps:
            meters.add(one_step(batches))
            progress.advance()
            maybe_inject_fault(state.step, rank, nets=state.nets)
            due = schedule.at(state.step)
            if not due.anything:
                continue
            if not meters.all_finite():  # one host sync: finite on every rank since the last check?
                progress.say(ckpts.roll_back())
                meters.reset(state.images_seen)
                progress.rewind(state.step)
                batches = iter(stream.iter_from(state.step * tc.d_steps))
                continue
            if due.log:
                metrics = _interval_metrics(meters, state)
                log.scalars(state.step, metrics)
                progress.log(state.step, metrics)
            if due.epoch_end:
                log.scalars(state.step, {"epoch": schedule.epoch(state.step), **meters.read_epoch()})
            if due.sample:
                samples.write(state.step, state.G, state.G_ema)
            best = due.evaluate and _evaluate(evaluate, state, metrics, log, rank == 0, cfg.model.g_sample_bn)
            if due.checkpoint:
                if state.G_ema is not None and cfg.model.g_sample_bn == "batch":
                    recompute_bn_stats(state.G_ema)  # training-neutral: ema_update overwrites these buffers
                ckpts.save(dict(metrics), best)
        log.finish(state.step)
    finally:
        progress.stop()
        log.close()
    samples.finish()
    return metrics


def total_steps(cfg: Config, num_samples: int) -> int:
    """`train.steps`, or `train.epochs` converted with the data set size and the global batch."""
    if cfg.train.epochs > 0:
        return max(1, math.ceil(cfg.train.epochs * num_samples / cfg.train.batch_size / cfg.train.d_steps))
    return cfg.train.steps


@dataclass
class _Step:
    """One training step: `d_steps` batches with fresh noise, the GAN step, the EMA update, the counters."""

    cfg: Config
    state: TrainState
    G: nn.Module  # what runs the step: DDP-wrapped and/or compiled
    D: nn.Module
    D_r1: nn.Module  # D for the R1 pass: DDP-wrapped like D, never compiled
    memory_format: torch.memory_format
    total: int  # the run's last step, where `optim.lr_decay_steps` ends
    fake_classes: FakeClasses | None = None  # a conditional model's fake labels; None: unconditional

    def __post_init__(self) -> None:
        from flowergan.train.gan.augment import make_augment

        tc = self.cfg.train
        self.loss = Loss.of(tc)
        self.augment: Callable[[torch.Tensor], torch.Tensor] | None = \
            make_augment(tc.diffaugment) if tc.diffaugment else None

    def __call__(self, batches: Batches) -> StepOutput:
        s, tc, device = self.state, self.cfg.train, self.state.device
        if self.cfg.optim.lr_decay_steps:  # plain floats: no device sync
            f = lr_factor(s.step, self.total, self.cfg.optim.lr_decay_steps)
            for opt, lr in ((s.opt_g, self.cfg.optim.lr_g), (s.opt_d, self.cfg.optim.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * f
        reals, zs = [], []
        real_ys: list[torch.Tensor] | None = [] if self.fake_classes is not None else None
        fake_ys: list[torch.Tensor] | None = [] if self.fake_classes is not None else None
        for _ in range(tc.d_steps):
            x, labels = next(batches)
            reals.append(x.to(device, non_blocking=True, memory_format=self.memory_format))
            zs.append(torch.randn(x.shape[0], self.cfg.model.nz, device=device))
            if self.fake_classes is not None and real_ys is not None and fake_ys is not None:
                real_ys.append(labels.to(device, non_blocking=True))
                fake_ys.append(self.fake_classes.draw(x.shape[0]))  # after z: the same stream, a fixed order
        with cudnn_autotune(device):
            out = gan_step(self.G, self.D, s.opt_g, s.opt_d, reals, zs, s.precision, self.loss, self.augment,
                           r1=r1_weight(s.step, tc.r1_gamma, tc.r1_every), D_r1=self.D_r1, real_ys=real_ys,
                           fake_ys=fake_ys)
        if s.G_ema is not None:
            # Warm-up: early on G_ema follows G closely, so short runs do not show mostly the random init.
            ema_update(s.G_ema, s.G, ema_decay_at(s.step, tc.ema_decay, tc.ema_warmup))
        s.step += 1
        s.images_seen += tc.batch_size * tc.d_steps
        return out


def _interval_metrics(meters: Meters, state: TrainState) -> dict[str, float]:
    """The log interval's scalars: mean losses and D outputs over ranks, speed, learning rates, images seen."""
    return {**meters.read_interval(state.images_seen), "LR/G": state.opt_g.param_groups[0]["lr"],
            "LR/D": state.opt_d.param_groups[0]["lr"], "Progress/images_seen": state.images_seen}


def _evaluate(evaluate: Evaluate | None, state: TrainState, metrics: dict[str, float], log: NullLogger,
              main: bool, bn_mode: str) -> bool:
    """Rank 0 scores G_ema (or G); the others wait for it at the checkpoint's collectives. True for a new best."""
    if evaluate is None or not main:
        return False
    scores = evaluate(for_sampling(state.G_ema or state.G, bn_mode), state.device)
    metrics.update(scores)
    log.scalars(state.step, {f"Eval/{k}": v for k, v in scores.items()})
    if not improves(evaluate, scores, state.best):
        return False
    state.best = scores[evaluate.best_key]
    return True


def _with_data_classes(cfg: Config, stream: BatchStream | None) -> Config:
    """A conditional model's config with num_classes and class names from the data (the given stream's, else the
    manifest of data.path); an unconditional one unchanged."""
    if cfg.model.conditional == "none":
        return cfg
    if stream is None:
        from flowergan.data import read_manifest

        classes = list(read_manifest(cfg.data.path).get("classes", []))
    elif isinstance(stream, LabelledStream):
        classes = list(stream.classes)
    else:
        raise UserError(f"model.conditional = {cfg.model.conditional!r} needs a data stream with class names; this "
                        "one has none")
    return with_classes(cfg, classes, f"data.path {cfg.data.path}")


def _prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"log.run_dir: cannot write to {run_dir} ({e.strerror}); choose another --run-dir") from None


def _build_stream(cfg: Config, rank: int, world: int, device: torch.device) -> BatchStream:
    from flowergan.data import build_stream

    return build_stream(cfg.data, batch_size=cfg.train.batch_size // world, resolution=cfg.model.resolution,
                        rank=rank, world_size=world, seed=cfg.train.seed, device=device)
