"""Small helpers for the core tests: an in-memory batch stream with the data stream's interface."""

from __future__ import annotations

import torch

from flowergan.config import Config, load_config

TINY = ["model.ngf=8", "model.ndf=8", "train.batch_size=8", "log.every=5", "log.sample_every=10",
        "train.checkpoint_every=10", "log.n_samples=16", "log.progress=false", "train.device=cpu"]


def tiny_config(run_dir, *extra: str) -> Config:
    """A 64x64 DCGAN with 8 feature maps: trains at a few hundred img/s on one core."""
    return load_config(None, [*TINY, f"log.run_dir={run_dir}", *extra])


class TensorStream:
    """Endless batches of fixed random images; `poison` maps a batch index to NaN images (once or always)."""

    def __init__(self, n: int = 64, res: int = 64, batch: int = 8, seed: int = 0,
                 poison: dict[int, bool] | None = None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, res, res, generator=g) * 2 - 1
        self.batch, self.num_samples, self.batches_per_epoch = batch, n, n // batch
        self.poison = dict(poison or {})  # batch index -> keep poisoning after the first time?
        self.poisoned = 0

    def iter_from(self, start: int):
        i = start
        while True:
            b = i % self.batches_per_epoch
            x = self.x[b * self.batch:(b + 1) * self.batch]
            if i in self.poison:
                self.poisoned += 1
                if not self.poison[i]:
                    del self.poison[i]
                x = torch.full_like(x, float("nan"))
            yield x, torch.zeros(self.batch, dtype=torch.long)
            i += 1


class ClassStream(TensorStream):
    """TensorStream with named classes: image i is class i % k (the stream a conditional model trains on)."""

    def __init__(self, k: int = 3, counts: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.classes = [f"class{c}" for c in range(k)]
        self.class_counts = counts or [1] * k
        self.labels = torch.arange(self.num_samples) % k

    def iter_from(self, start: int):
        for i, (x, _) in enumerate(super().iter_from(start), start=start):
            b = i % self.batches_per_epoch
            yield x, self.labels[b * self.batch:(b + 1) * self.batch].clone()
