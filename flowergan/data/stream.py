"""The training data stream: shards -> equal, deterministic, resumable batches on every rank.

Epoch plan (streaming, `data.cache = "none"`). Let N = samples, B = per-rank batch, R = ranks (world size),
W = loader workers (0 counts as 1). Every rank yields `batches_per_epoch = max(1, N // (B * R))` batches per
epoch, so DDP ranks never wait on each other (the classic WebDataset + DDP hang). In epoch e the shards are put
in a seeded order (seed, e) and read as one long sequence; rank r takes the r-th slice of
`batches_per_epoch * B` samples (split by node, at the sample level so counts are exact), and inside it loader
worker v takes the samples of the batches j with j % W == v (split by worker), shuffles them in a seeded buffer
(`data.shuffle_buffer`) and cuts batches. The DataLoader hands batches out round-robin over workers, so batch j
always comes from the same plan: every kept image is seen exactly once per epoch across ranks (when N divides
evenly; otherwise N mod (B * R) different images sit out each epoch), and the sequence of batches depends only
on (manifest, seed, rank, world_size, batch_size, workers, shuffle_buffer).

Cached plan (`data.cache = "memory" | "device"`): the whole decoded set is kept as uint8 (64 px: 12 KB per
image) in RAM or on the GPU; epoch e is a seeded permutation (seed, e) of all N images and rank r takes every
R-th batch of it. The same rules give the same numbers of batches.

Resume: `Stream.iter_from(k)` yields exactly what `iter(stream)` yields from its k-th batch on (0-based), without
decoding the skipped batches (whole epochs are skipped by arithmetic, the rest of one epoch by reading raw
bytes), so a resumed run sees bit-identical batches. Augmentation (flips, colour jitter) is seeded per
(seed, rank, batch index), so it does not depend on which worker built the batch.

Sources: local paths, `file://`, `pipe:` commands (with a `{file}` placeholder for the file name) and fsspec URLs
(s3://, gs://, ... via the matching fsspec plugin); split by rank and worker here, no Ray or torch.distributed
import (the caller passes rank and world size).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowergan.data.augment import batch_seed, epoch_seed, to_float
from flowergan.data.png import decode_png_batch
from flowergan.data.shards import MAKE_HINT, read_manifest, shard_url
from flowergan.errors import UserError


class _PipeReader:
    """stdout of a `pipe:` command as a readable file; closing it early stops the command."""

    def __init__(self, command: str):
        import subprocess

        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
        self.read = self.proc.stdout.read

    def close(self) -> None:
        self.proc.stdout.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _open_url(url: str):
    """Open a shard for reading: local path, file://, pipe: command, or any fsspec URL.

    Deliberately without webdataset: the GPU machines ship torch but not webdataset, and training must still read
    shards there (webdataset is needed only to write and verify them).
    """
    if url.startswith("pipe:"):
        return _PipeReader(url[len("pipe:"):])
    if url.startswith("file://"):
        return open(url[len("file://"):], "rb")
    if "://" not in url:
        return open(url, "rb")
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except ImportError as e:
        scheme = url.split("://", 1)[0]
        raise UserError(f"{url}: reading {scheme}:// needs an fsspec plugin ({e})") from None


def _shuffled(items: Iterator, bufsize: int, rng: random.Random) -> Iterator:
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


@dataclass(frozen=True)
class Plan:
    """Everything that decides the batch sequence of one rank (picklable, shared with loader workers)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    ext: str
    resolution: int
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

    def raw_samples(self, epoch: int, v: int) -> Iterator[dict]:
        """Undecoded samples of worker stream v in `epoch`, shuffled in a seeded buffer."""
        from flowergan.data.tario import TarFormatError, iter_samples

        def read() -> Iterator[dict]:
            for shard, first, stop in self.pieces(epoch, v):
                url = self.urls[shard]
                try:
                    f = _open_url(url)
                except OSError as e:
                    raise UserError(f"{url}: cannot open shard ({e}); check data.path") from None
                try:
                    seen = 0
                    for sample in iter_samples(f):
                        if seen >= stop:
                            break
                        if seen >= first:
                            sample["__url__"] = url
                            yield sample
                        seen += 1
                    if seen < stop:
                        raise UserError(f"{url}: holds {seen} samples, the manifest says at least {stop}; "
                                        "the shards changed after the manifest was written (re-make them)")
                except TarFormatError as e:
                    raise UserError(f"{url}: damaged shard ({e}); run `flowergan data verify`") from None
                finally:
                    f.close()

        if self.shuffle_buffer <= 1:
            yield from read()
            return
        rng = random.Random(f"{self.seed}:{self.rank}:{self.world_size}:{self.workers}:{epoch}:{v}")
        yield from _shuffled(read(), self.shuffle_buffer, rng)

    def decode(self, samples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """A list of raw samples -> (uint8 [B, R, R, 3], int64 [B]); a wrong size is a clear error."""
        from flowergan.data.images import decode

        r = self.resolution
        blobs = []
        for s in samples:
            if self.ext not in s:
                raise UserError(f"{s['__url__']}: sample {s['__key__']} has no .{self.ext} image")
            blobs.append(s[self.ext])
        x, slow = decode_png_batch(blobs, r, r) if self.ext == "png" else (np.empty((len(blobs), r, r, 3),
                                                                                     np.uint8), range(len(blobs)))
        for k in slow:
            try:
                img = decode(blobs[k])
            except Exception as e:
                raise UserError(f"{samples[k]['__url__']}: sample {samples[k]['__key__']} does not decode ({e}); "
                                "run `flowergan data verify`") from None
            if img.shape != (r, r, 3):
                raise UserError(f"{samples[k]['__url__']}: sample {samples[k]['__key__']} is "
                                f"{img.shape[1]}x{img.shape[0]}, expected {r}x{r}")
            x[k] = img
        labels = np.array([int(s.get("cls", b"0")) for s in samples], np.int64)
        return x, labels

    def worker_stream(self, v: int, start: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Endless (j, images, labels) for the batches j >= start of worker stream v, in increasing j."""
        epoch = start // self.batches_per_epoch
        while True:
            js = self.worker_batches(epoch, v)
            if len(js) and js[-1] >= start:
                raw = self.raw_samples(epoch, v)
                for j in js:
                    batch = [next(raw) for _ in range(self.batch_size)]
                    if j >= start:  # skipped batches are read but never decoded
                        yield (j, *self.decode(batch))
                raw.close()
            epoch += 1


class _WorkerDataset(torch.utils.data.IterableDataset):
    """DataLoader worker i plays stream (start + i) % W, so round-robin hand-out yields start, start+1, ..."""

    def __init__(self, plan: Plan, start: int, augment: dict[str, Any] | None):
        super().__init__()
        self.plan, self.start, self.augment = plan, start, augment

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        i = info.id if info is not None else 0
        v = (self.start + i) % self.plan.workers
        first = self.start + i  # the first batch index this worker builds
        for j, x, labels in self.plan.worker_stream(v, first):
            x_t, y_t = torch.from_numpy(x), torch.from_numpy(labels)
            if self.augment is not None:  # CPU training: convert here, off the training process
                x_t = to_float(x_t, seed=batch_seed(self.plan.seed, self.plan.rank, j), **self.augment)
            yield j, x_t, y_t


def _reraise_plainly(batches: Iterator) -> Iterator:
    """Pass batches through; a UserError from a loader worker comes back as its one line, not a traceback."""
    try:
        yield from batches
    except UserError as e:
        text = str(e)
        if "Original Traceback" not in text:
            raise
        last = text.strip().splitlines()[-1]  # "flowergan.errors.UserError: <message>"
        raise UserError(last.split(": ", 1)[1] if ": " in last else last) from None


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader processes each use one core; the trainer keeps the rest


class Stream:
    """Endless batches `(x float32 [B,3,R,R] in [-1,1] on device, labels int64 [B])` for one rank.

    Attributes: `num_samples` (images in the data set), `batches_per_epoch` (= num_samples // (B * world),
    at least 1), `num_classes`, `classes`, `manifest`. `iter(stream)` starts at batch 0; `stream.iter_from(k)`
    starts at batch k and yields exactly the same batches as `iter(stream)` does from its k-th on.
    """

    def __init__(self, plan: Plan, manifest: dict[str, Any], *, cache: str, hflip: float, color_jitter: float,
                 device: torch.device | None):
        self.plan = plan
        self.manifest = manifest
        self.cache = cache
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.hflip, self.color_jitter = hflip, color_jitter
        self.num_samples = plan.num_samples
        self.batches_per_epoch = plan.batches_per_epoch
        self.num_classes = int(manifest["num_classes"])
        self.classes = list(manifest.get("classes", []))
        self.batch_size = plan.batch_size
        self.resolution = plan.resolution
        self.loader_workers = 0
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return (f"Stream({self.num_samples} images, {self.num_classes} classes, {self.resolution}px, batch "
                f"{self.batch_size} x {self.plan.world_size} ranks, {self.batches_per_epoch} batches/epoch, "
                f"cache={self.cache}, workers={self.loader_workers})")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from global batch `batch_index` on (0-based, counted over epochs), forever."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        if self.cache == "none":
            return self._iter_streaming(batch_index)
        return self._iter_cached(batch_index)

    # Streaming.
    def _iter_streaming(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        on_cuda = self.device.type == "cuda"
        augment = None if on_cuda else {"hflip": self.hflip, "jitter": self.color_jitter}
        dataset = _WorkerDataset(self.plan, start, augment)
        if self.loader_workers == 0:
            batches = iter(dataset)
        else:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=self.loader_workers, pin_memory=on_cuda,
                prefetch_factor=4, worker_init_fn=_worker_init, persistent_workers=False,
                # Its own generator: starting workers must not draw from the global RNG, which the training
                # loop's noise uses and a checkpoint restores (else a resumed run drifts by one draw).
                generator=torch.Generator())
            batches = iter(loader)
        expected = start
        for j, x, labels in _reraise_plainly(batches):
            if j != expected:  # would mean the round-robin hand-out broke; never silently reorder data
                raise RuntimeError(f"data loader returned batch {j}, expected {expected}")
            expected += 1
            if on_cuda:  # uint8 over the bus (pinned by the DataLoader when it has workers), converted there
                x = to_float(x.to(self.device, non_blocking=True), seed=batch_seed(self.plan.seed, self.plan.rank, j),
                             hflip=self.hflip, jitter=self.color_jitter)
            yield x, labels.to(self.device, non_blocking=True)

    # Cached.
    def _load_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every shard once (in the loader workers) into uint8 [N,R,R,3] + labels, on the cache device."""
        if self._cached is not None:
            return self._cached
        plan = self.plan
        one = Plan(plan.urls, plan.counts, plan.ext, plan.resolution, 1, 0, 1, 1, plan.seed, 0)
        parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        dataset = _ShardDecoder(one)
        if self.loader_workers == 0:
            items = iter(dataset)
        else:
            items = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.loader_workers,
                                                     worker_init_fn=_worker_init))
        for shard, x, labels in _reraise_plainly(items):
            parts[int(shard)] = (np.asarray(x), np.asarray(labels))
        x = torch.from_numpy(np.concatenate([parts[k][0] for k in range(len(plan.urls))]))
        labels = torch.from_numpy(np.concatenate([parts[k][1] for k in range(len(plan.urls))]))
        if self.cache == "device" and self.device.type == "cuda":
            x, labels = x.to(self.device), labels.to(self.device)
        self._cached = (x, labels)
        return self._cached

    def _iter_cached(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x_all, y_all = self._load_cache()
        plan = self.plan
        n, b, world, bpe = plan.num_samples, plan.batch_size, plan.world_size, plan.batches_per_epoch
        j = start
        while True:
            epoch, k = divmod(j, bpe)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(plan.seed, epoch)))
            while k < bpe:
                g = k * world + plan.rank  # ranks interleave through the permutation
                idx = perm[(torch.arange(b) + g * b) % n]
                idx = idx.to(x_all.device)
                x = x_all.index_select(0, idx)
                if x.device != self.device:
                    x = x.to(self.device, non_blocking=True)
                x = to_float(x, seed=batch_seed(plan.seed, plan.rank, j), hflip=self.hflip, jitter=self.color_jitter)
                yield x, y_all.index_select(0, idx).to(self.device, non_blocking=True)
                k += 1
                j += 1


class _ShardDecoder(torch.utils.data.IterableDataset):
    """Loader worker i decodes shards i, i + W, ... whole (for the in-memory cache)."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def __iter__(self):
        from flowergan.data.tario import iter_samples

        info = torch.utils.data.get_worker_info()
        i, w = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in range(i, len(self.plan.urls), w):
            url = self.plan.urls[shard]
            f = _open_url(url)
            try:
                samples = []
                for s in iter_samples(f):
                    s["__url__"] = url
                    samples.append(s)
            finally:
                f.close()
            if len(samples) != self.plan.counts[shard]:
                raise UserError(f"{url}: holds {len(samples)} samples, the manifest says {self.plan.counts[shard]}")
            x, labels = self.plan.decode(samples)
            yield shard, torch.from_numpy(x), torch.from_numpy(labels)


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable counts reclaimable page cache), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(n: int, resolution: int, cache: str, device: torch.device) -> None:
    need = n * resolution * resolution * 3
    if cache == "device" and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if need > 0.5 * free:
            raise UserError(f"data.cache = 'device': the decoded set needs {need / 2**30:.1f} GiB, more than half "
                            f"of the {free / 2**30:.1f} GiB free on {device}; use data.cache = 'memory' or 'none'")
        return
    avail = _available_memory()
    if avail is None:
        return
    if need > 0.5 * avail:
        raise UserError(f"data.cache = '{cache}': the decoded set needs {need / 2**30:.1f} GiB, more than half of "
                        f"the {avail / 2**30:.1f} GiB of free memory; use data.cache = 'none'")


def build_stream(cfg, *, batch_size: int, resolution: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: torch.device | None = None) -> Stream:
    """The batch stream of one rank for DataConfig `cfg` (see the module docstring for the epoch plan)."""
    if batch_size < 1:
        raise UserError(f"batch size per rank must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    path = str(cfg.path)
    if not path:
        raise UserError(f"data.path is empty; {MAKE_HINT}")
    manifest = read_manifest(path)
    if int(manifest["resolution"]) != resolution:
        raise UserError(f"data.path {path} holds {manifest['resolution']}px images but the model is {resolution}px "
                        f"(model.resolution); make {resolution}px shards: `flowergan data synth --out DIR --size "
                        f"{resolution}` or `flowergan data shard SRC --out DIR --size {resolution}`")
    urls = tuple(shard_url(path, s["name"]) for s in manifest["shards"])
    counts = tuple(int(s["samples"]) for s in manifest["shards"])
    workers = int(cfg.workers)
    plan = Plan(urls, counts, manifest["image_format"], resolution, batch_size, rank, world_size, max(1, workers),
                seed, int(cfg.shuffle_buffer))
    device = torch.device(device) if device is not None else torch.device("cpu")
    if cfg.cache == "none":
        readers = world_size * max(1, workers)
        if len(urls) < readers:
            raise UserError(f"data.path {path} has {len(urls)} shards but {world_size} ranks x {max(1, workers)} "
                            f"loader workers need at least {readers} (each reads its own shards); re-shard with a "
                            f"smaller --shard-size, lower data.workers, or set data.cache = 'memory'")
    else:
        _check_memory(plan.num_samples, resolution, cfg.cache, device)
    stream = Stream(plan, manifest, cache=cfg.cache, hflip=float(cfg.hflip), color_jitter=float(cfg.color_jitter),
                    device=device)
    stream.loader_workers = workers
    return stream
