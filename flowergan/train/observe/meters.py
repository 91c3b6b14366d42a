"""The loop's running means: accumulated on the device every step, read (one host sync) only at log intervals."""

from __future__ import annotations

import time

import torch

from flowergan.train import distributed as dist
from flowergan.train.gan.losses import logged_d_tags
from flowergan.train.gan.step import StepOutput


def logged(loss: str = "bce") -> tuple[str, ...]:
    """The step's scalars for `train.loss`: the losses, then D's statistic (a probability only under bce)."""
    return ("Loss/D", "Loss/G", *logged_d_tags(loss))


LOGGED = logged("bce")


def epoch_tags(tags: tuple[str, ...]) -> dict[str, int]:
    """Epoch/* tag -> index into `tags`: the losses, D on the reals and on the fakes after D's update."""
    return {f"Epoch/{tags[i].replace('/', '_')}": i for i in (0, 1, 2, 4)}


EPOCH = epoch_tags(LOGGED)  # {"Epoch/Loss_D": 0, "Epoch/Loss_G": 1, "Epoch/D_real": 2, "Epoch/D_fake_after": 4}


class Meters:
    """Sums of the step outputs since the last log interval and since the epoch began, and whether every loss
    since the last check was finite."""

    def __init__(self, device: torch.device, images_seen: int, tags: tuple[str, ...] = LOGGED):
        self.t, self.images = time.perf_counter(), images_seen  # at the last read, for the img/s figure
        self.tags, self.epoch_tags = tags, epoch_tags(tags)
        self.interval = torch.zeros(len(tags), device=device)
        self.epoch = torch.zeros(len(tags), device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.n = self.epoch_n = 0

    def add(self, out: StepOutput) -> None:
        """One step's outputs (no host sync)."""
        values = torch.stack([out.loss_d, out.loss_g, out.d_real, out.d_fake_before, out.d_fake_after])
        self.finite &= torch.isfinite(values[:2]).all()
        self.interval += values
        self.epoch += values
        self.n += 1
        self.epoch_n += 1

    def all_finite(self) -> bool:
        """Were the losses finite on every rank since the last call? One host sync (a collective)."""
        ok = dist.all_true(self.finite)
        self.finite.fill_(True)
        return ok

    def read_interval(self, images_seen: int) -> dict[str, float]:
        """Means over ranks and steps since the last read (`tags`) and Speed/img_per_s; starts a new
        interval."""
        means = (dist.mean_across(self.interval) / max(self.n, 1)).tolist()
        now = time.perf_counter()
        speed = (images_seen - self.images) / max(now - self.t, 1e-9)
        self.interval.zero_()
        self.n, self.t, self.images = 0, now, images_seen
        return {**dict(zip(self.tags, means)), "Speed/img_per_s": speed}

    def read_epoch(self) -> dict[str, float]:
        """Epoch means (the Epoch/* tags); starts a new epoch."""
        means = (dist.mean_across(self.epoch) / max(self.epoch_n, 1)).tolist()
        self.epoch.zero_()
        self.epoch_n = 0
        return {tag: means[i] for tag, i in self.epoch_tags.items()}

    def reset(self, images_seen: int) -> None:
        """Forget everything (after a rollback to `images_seen`)."""
        self.interval.zero_(), self.epoch.zero_(), self.finite.fill_(True)
        self.n = self.epoch_n = 0
        self.t, self.images = time.perf_counter(), images_seen
