"""The classes a conditional G is asked for in training (`train.fake_classes`), drawn per batch on the device.

From this rank's own torch stream (the training device's generator, which checkpoints save and restore), so a
killed and resumed run draws the same labels. No host sync: inverse-CDF sampling is a `searchsorted` of uniform
draws, and uniform classes a `randint`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FAKE_CLASSES = ("data", "uniform")  # train.fake_classes


class FakeClasses:
    """`draw(n)`: n class labels (int64 on `device`), by the data's class frequencies or uniformly."""

    def __init__(self, counts: Sequence[int], mode: str, device: torch.device):
        if mode not in FAKE_CLASSES:
            raise ValueError(f"fake_classes must be one of {FAKE_CLASSES}, got {mode!r}")
        if len(counts) < 2 or min(counts) < 0 or sum(counts) <= 0:
            raise ValueError(f"need >= 2 non-negative class counts with a positive sum, got {list(counts)}")
        self.num_classes, self.mode, self.device = len(counts), mode, device
        freq = torch.tensor([float(c) for c in counts], dtype=torch.float64)
        cdf = (freq.cumsum(0) / freq.sum()).float()
        cdf[-1] = 1.0  # rounding must not leave the last class a sliver short of u < 1
        self.cdf = cdf.to(device)

    def draw(self, n: int) -> torch.Tensor:
        if self.mode == "uniform":
            return torch.randint(self.num_classes, (n,), device=self.device)
        u = torch.rand(n, device=self.device)
        # right=True: u in [cdf[k-1], cdf[k]) is class k, so a class of zero count (an empty interval) is never drawn.
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.num_classes - 1)
