"""The loop's running means: accumulated on the device every step, read (one host sync) only at log intervals."""

from __future__ import annotations

import time

import torch

from flowergan.train import distributed as dist
from flowergan.train.gan.step import StepOutput

LOGGED = ("Loss/D", "Loss/G", "D/real", "D/fake_before", "D/fake_after")
EPOCH = {"Epoch/Loss_D": 0, "Epoch/Loss_G": 1, "Epoch/D_real": 2, "Epoch/D_fake_after": 4}  # tag -> LOGGED index


class Meters:
    """Sums of the step outputs since the last log interval and since the epoch began, and whether every loss
    since the last check was finite."""

    def __init__(self, device: torch.device, images_seen: int):
        self.t, self.images = time.perf_counter(), images_seen  # at the last read, for the img/s figure
        self.interval = torch.zeros(len(LOGGED), device=device)
        self.epoch = torch.zeros(len(LOGGED), device=device)
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
        """Means over ranks and steps since the last read (LOGGED tags) and Speed/img_per_s; starts a new
        interval."""
        means = (dist.mean_across(self.interval) / max(self.n, 1)).tolist()
        now = time.perf_counter()
        speed = (images_seen - self.images) / max(now - self.t, 1e-9)
        self.interval.zero_()
        self.n, self.t, self.images = 0, now, images_seen
        return {**dict(zip(LOGGED, means)), "Speed/img_per_s": speed}

    def read_epoch(self) -> dict[str, float]:
        """Epoch means (the Epoch/* tags); starts a new epoch."""
        means = (dist.mean_across(self.epoch) / max(self.epoch_n, 1)).tolist()
        self.epoch.zero_()
        self.epoch_n = 0
        return {tag: means[i] for tag, i in EPOCH.items()}

    def reset(self, images_seen: int) -> None:
        """Forget everything (after a rollback to `images_seen`)."""
        self.interval.zero_(), self.epoch.zero_(), self.finite.fill_(True)
        self.n = self.epoch_n = 0
        self.t, self.images = time.perf_counter(), images_seen
