"""The uncached loader (`data.cache = "none"`, beside cached.py): each loader worker reads its pieces of the shards
as it goes, per the Plan.

Batch j is built by worker stream j % W from the samples `Plan.pieces` names, shuffled in a seeded buffer; a
resumed stream reads (but never decodes) the batches before its start within that epoch, and skips whole epochs
by arithmetic. Augmentation is seeded per (seed, rank, j), so it does not depend on which process built a batch.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import torch

from flowergan.data.loader import shard_reader, workers
from flowergan.data.loader.decode import decode_batch
from flowergan.data.loader.plan import Plan
from flowergan.data.loader.protocol import Batch
from flowergan.data.loader.transform import batch_seed, to_float
from flowergan.errors import UserError


def _shuffled(items: Iterator, bufsize: int, rng: random.Random) -> Generator:
    """WebDataset-style buffer shuffle: keep `bufsize` items, emit a random one per new item, then the rest."""
    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) >= bufsize:
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def _read_pieces(plan: Plan, epoch: int, v: int) -> Generator[dict, None, None]:
    """The raw samples of worker stream v in `epoch`, piece after piece, in reading order."""
    for shard, first, stop in plan.pieces(epoch, v):
        url, count = plan.urls[shard], plan.counts[shard]
        samples = shard_reader.iter_samples(url)
        seen = 0
        try:
            for sample in samples:
                if first <= seen < stop:
                    yield sample
                seen += 1
                # A piece that ends inside the shard stops the download there; one that ends with the shard reads
                # on to the end, so a command that failed after sending everything is still reported.
                if seen >= stop and stop < count:
                    break
        finally:
            samples.close()
        if seen < stop:
            raise UserError(f"{url}: holds {seen} samples, the manifest says {count}; the shards changed "
                            "after the manifest was written (re-make them)")


def decode_or_fail(samples: list[dict], ext: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """decode_batch for training: the first sample that fails stops it, named by shard and key."""
    x, labels, bad = decode_batch(samples, ext, resolution)
    if bad:
        k, reason = bad[0]
        raise UserError(f"{samples[k]['__url__']}: sample {samples[k]['__key__']} {reason}; "
                        "run `flowergan data verify`")
    return x, labels


def worker_stream(plan: Plan, ext: str, resolution: int, v: int,
                  start: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Endless (j, uint8 images, labels) for the batches j >= start of worker stream v, in increasing j."""
    epoch = start // plan.batches_per_epoch
    while True:
        js = plan.worker_batches(epoch, v)
        if len(js) and js[-1] >= start:
            raw = _read_pieces(plan, epoch, v)
            if plan.shuffle_buffer > 1:
                raw = _shuffled(raw, plan.shuffle_buffer, plan.shuffle_rng(epoch, v))
            for j in js:
                batch = [next(raw) for _ in range(plan.batch_size)]
                if j >= start:  # skipped batches are read but never decoded
                    yield (j, *decode_or_fail(batch, ext, resolution))
            raw.close()
        epoch += 1


class _WorkerDataset(torch.utils.data.IterableDataset):
    """DataLoader worker i plays stream (start + i) % W, so round-robin hand-out yields start, start+1, ..."""

    def __init__(self, plan: Plan, ext: str, resolution: int, start: int, augment: dict[str, Any] | None):
        super().__init__()
        self.plan, self.ext, self.resolution, self.start, self.augment = plan, ext, resolution, start, augment

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        i = info.id if info is not None else 0
        v = (self.start + i) % self.plan.workers
        for j, x, labels in worker_stream(self.plan, self.ext, self.resolution, v, self.start + i):
            x_t, y_t = torch.from_numpy(x), torch.from_numpy(labels)
            if self.augment is not None:  # CPU training: convert here, off the training process
                x_t = to_float(x_t, seed=batch_seed(self.plan.seed, self.plan.rank, j), **self.augment)
            yield j, x_t, y_t


class ShardBatches:
    """Batches streamed from the shards by `loader_workers` processes (0: in this process)."""

    def __init__(self, plan: Plan, ext: str, resolution: int, *, loader_workers: int, hflip: float, jitter: float,
                 device: torch.device):
        self.plan, self.ext, self.resolution = plan, ext, resolution
        self.loader_workers, self.hflip, self.jitter, self.device = loader_workers, hflip, jitter, device

    def __call__(self, start: int) -> Iterator[Batch]:
        on_cuda = self.device.type == "cuda"
        augment = None if on_cuda else {"hflip": self.hflip, "jitter": self.jitter}
        dataset = _WorkerDataset(self.plan, self.ext, self.resolution, start, augment)
        expected = start
        for j, x, labels in workers.run(dataset, self.loader_workers, pin_memory=on_cuda):
            if j != expected:  # would mean the round-robin hand-out broke; never silently reorder data
                raise RuntimeError(f"data loader returned batch {j}, expected {expected}")
            expected += 1
            if on_cuda:  # uint8 over the bus (pinned by the DataLoader when it has workers), converted there
                x = to_float(x.to(self.device, non_blocking=True), seed=batch_seed(self.plan.seed, self.plan.rank, j),
                             hflip=self.hflip, jitter=self.jitter)
            yield x, labels.to(self.device, non_blocking=True)
