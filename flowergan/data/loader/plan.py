"""The epoch plan: which samples each rank and loader worker gets, batch by batch (arithmetic only, no I/O).

Let N = samples, B = per-rank batch, R = ranks (world size), W = loader workers (0 counts as 1). Every rank yields
`batches_per_epoch = max(1, N // (B * R))` batches per epoch, so DDP ranks never wait on each other (the classic
WebDataset + DDP hang). Global batch index j counts over epochs: epoch j // batches_per_epoch.

Streaming: in epoch e the shards are put in a seeded order (seed, e) and read as one long sequence; rank r takes
the r-th slice of `batches_per_epoch * B` samples (split at the sample level, so counts are exact), and inside it
worker stream v takes the samples of the batches j with j % W == v, shuffles them in a seeded buffer and cuts
batches. The DataLoader hands batches out round-robin over workers, so batch j always comes from the same plan.

Cached: epoch e is a seeded permutation (seed, e) of all N samples; rank r takes every R-th batch of it.

Either way every kept sample is seen exactly once per epoch across ranks (when N divides evenly; otherwise
N mod (B * R) different samples sit out each epoch).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from flowergan.data.loader.transform import epoch_seed


@dataclass(frozen=True)
class Plan:
    """Everything that decides which samples make batch j of one rank (picklable, shared with loader workers)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]  # samples per shard, from the manifest
    batch_size: int
    rank: int
    world_size: int
    workers: int  # >= 1: the number of batch streams interleaved round-robin
    seed: int
    shuffle_buffer: int

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.num_samples // (self.batch_size * self.world_size))

    # Streaming.
    def shard_order(self, epoch: int) -> np.ndarray:
        """The shard order of `epoch` (the same on every rank)."""
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.urls))

    def worker_batches(self, epoch: int, v: int) -> range:
        """Global indices j of the batches that worker stream v builds in `epoch`."""
        lo, hi = epoch * self.batches_per_epoch, (epoch + 1) * self.batches_per_epoch
        return range(lo + (v - lo) % self.workers, hi, self.workers)

    def pieces(self, epoch: int, v: int) -> list[tuple[int, int, int]]:
        """(shard, first, stop) sample ranges that worker stream v reads in `epoch`, in reading order."""
        b, bpe = self.batch_size, self.batches_per_epoch
        start = self.rank * bpe * b + b * sum(len(self.worker_batches(epoch, u)) for u in range(v))
        length = len(self.worker_batches(epoch, v)) * b
        order = self.shard_order(epoch)
        counts = np.asarray(self.counts)[order]
        ends = np.cumsum(counts)
        n = int(ends[-1])
        out: list[tuple[int, int, int]] = []
        pos = start % n
        while length > 0:  # the sequence wraps around when N < B * R (tiny data sets)
            k = int(np.searchsorted(ends, pos, side="right"))
            first = pos - (int(ends[k - 1]) if k else 0)
            take = min(int(counts[k]) - first, length)
            out.append((int(order[k]), first, first + take))
            length -= take
            pos = (pos + take) % n
        return out

    def shuffle_rng(self, epoch: int, v: int) -> random.Random:
        """The generator of worker stream v's shuffle buffer in `epoch`."""
        return random.Random(f"{self.seed}:{self.rank}:{self.world_size}:{self.workers}:{epoch}:{v}")

    # Cached.
    def cached_batches(self, start: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Endless (j, indices into the manifest-ordered set) of this rank's batches j >= start, set in memory."""
        n, b, bpe = self.num_samples, self.batch_size, self.batches_per_epoch
        j = start
        while True:
            epoch, first = divmod(j, bpe)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
            for k in range(first, bpe):
                g = k * self.world_size + self.rank  # ranks interleave through the permutation
                yield j, perm[(torch.arange(b) + g * b) % n]
                j += 1
