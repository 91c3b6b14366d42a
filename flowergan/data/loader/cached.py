"""The cached set (`data.cache = "memory" | "device"`): every image decoded once into uint8, in RAM or on the GPU.

64 px images take 12 KB each (50 MB for 4,096), so small sets never wait on the disk or the decoder. The shards are
decoded whole by the loader workers on first use; batches are then index lookups per `Plan.cached_batches`.
`data.cache = "auto"` picks the cache here (`resolve_cache`) from the set's size and the memory free now (RAM:
the node's, or the pod's cgroup limit less its usage where that is smaller).
Nothing in a batch waits for the device: indices travel through pinned memory without blocking.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from flowergan.data.loader import shard_reader, workers
from flowergan.data.loader.plan import Plan
from flowergan.data.loader.protocol import Batch
from flowergan.data.loader.transform import batch_seed, to_device, to_float
from flowergan.data.loader.uncached import decode_or_fail
from flowergan.errors import UserError


class _ShardDecoder(torch.utils.data.IterableDataset):
    """Loader worker i decodes shards i, i + W, ... whole."""

    def __init__(self, plan: Plan, ext: str, resolution: int):
        super().__init__()
        self.plan, self.ext, self.resolution = plan, ext, resolution

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        i, w = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in range(i, len(self.plan.urls), w):
            url, count = self.plan.urls[shard], self.plan.counts[shard]
            samples = list(shard_reader.iter_samples(url))
            if len(samples) != count:
                raise UserError(f"{url}: holds {len(samples)} samples, the manifest says {count}")
            x, labels = decode_or_fail(samples, self.ext, self.resolution)
            yield shard, torch.from_numpy(x), torch.from_numpy(labels)


class CachedBatches:
    """Batches looked up in the decoded set, which is loaded on the first call and kept."""

    def __init__(self, plan: Plan, ext: str, resolution: int, *, cache: str, loader_workers: int, hflip: float,
                 jitter: float, device: torch.device):
        self.plan, self.ext, self.resolution, self.cache = plan, ext, resolution, cache
        self.loader_workers, self.hflip, self.jitter, self.device = loader_workers, hflip, jitter, device
        self._set: tuple[torch.Tensor, torch.Tensor] | None = None

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, R, R, 3] + labels in manifest order, on the GPU for cache = "device"."""
        if self._set is None:
            parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            dataset = _ShardDecoder(self.plan, self.ext, self.resolution)
            for shard, x, labels in workers.run(dataset, self.loader_workers):
                parts[int(shard)] = (x, labels)
            x = torch.cat([parts[k][0] for k in range(len(self.plan.urls))])
            labels = torch.cat([parts[k][1] for k in range(len(self.plan.urls))])
            if self.cache == "device" and self.device.type == "cuda":
                x, labels = x.to(self.device), labels.to(self.device)
            self._set = (x, labels)
        return self._set

    def __call__(self, start: int) -> Iterator[Batch]:
        x_all, y_all = self._load()
        for j, idx in self.plan.cached_batches(start):
            idx = to_device(idx, x_all.device)
            if x_all.device == self.device:  # both normalised: build_stream's device, a tensor's
                x = x_all.index_select(0, idx)
            else:  # "memory" on a GPU: gather straight into pinned RAM, then copy without blocking
                x = torch.empty((len(idx), *x_all.shape[1:]), dtype=x_all.dtype, pin_memory=True)
                x = to_device(torch.index_select(x_all, 0, idx, out=x), self.device)
            x = to_float(x, seed=batch_seed(self.plan.seed, self.plan.rank, j), hflip=self.hflip, jitter=self.jitter)
            yield x, to_device(y_all.index_select(0, idx), self.device)


# This process's cgroup memory files: (limit, usage, stat) of cgroup v2, then of v1. A container sees the node's
# /proc/meminfo, but its pod is OOM-killed at its own limit.
CGROUP_MEMORY = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current"), Path("/sys/fs/cgroup/memory.stat")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
     Path("/sys/fs/cgroup/memory/memory.stat")),
)
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def _inactive_file(stat: Path) -> int:
    """Reclaimable page cache the cgroup's usage counts (inactive_file; v1 says total_inactive_file), else 0."""
    try:
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_free() -> int | None:
    """Bytes this container may still take before its cgroup's memory limit, or None where it has no limit."""
    for limit_file, usage_file, stat_file in CGROUP_MEMORY:
        try:
            limit_text = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= _NO_LIMIT:
            return None
        return max(0, int(limit_text) - (usage - _inactive_file(stat_file)))
    return None


def _node_available() -> int | None:
    """The node's MemAvailable (it counts reclaimable page cache), if known."""
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


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations: the node's, or less where a cgroup (a pod's `memory.max`)
    limits this process; None if unknown."""
    known = [b for b in (_node_available(), _cgroup_free()) if b is not None]
    return min(known) if known else None


# A cache may take at most this share of the memory free when the stream is built (the GPU's for "device", RAM's
# for "memory"): the rest is for the models, activations, loader workers and other ranks on the same machine.
CACHE_FRACTION = 0.5


def _free_memory(cache: str, device: torch.device) -> int | None:
    """Bytes free for a cache of this kind: the GPU's for "device" on CUDA, else RAM's; None if unknown."""
    if cache == "device" and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return _available_memory()


def _fits(need: int, cache: str, device: torch.device) -> bool:
    free = _free_memory(cache, device)
    return free is None or need <= CACHE_FRACTION * free


def resolve_cache(cache: str, n: int, resolution: int, device: torch.device) -> str:
    """The cache `data.cache` means here: "auto" becomes device (CUDA, fits), memory (fits in RAM) or none.

    On the CPU "auto" streams (none), as before "auto" existed. Sizes count uint8 pixels, the cache's own format.
    """
    if cache != "auto":
        return cache
    if device.type != "cuda":
        return "none"
    need = n * resolution * resolution * 3
    for kind in ("device", "memory"):
        if _fits(need, kind, device):
            return kind
    return "none"


def check_memory(n: int, resolution: int, cache: str, device: torch.device) -> None:
    """Refuse a cache that would take more than CACHE_FRACTION of the free memory (RAM, or the GPU's for "device")."""
    need = n * resolution * resolution * 3
    if _fits(need, cache, device):
        return
    free = _free_memory(cache, device) or 0
    if cache == "device" and device.type == "cuda":
        raise UserError(f"data.cache = 'device': the decoded set needs {need / 2**30:.1f} GiB, more than "
                        f"{CACHE_FRACTION:.0%} of the {free / 2**30:.1f} GiB free on {device}; "
                        "use data.cache = 'memory' or 'none'")
    raise UserError(f"data.cache = '{cache}': the decoded set needs {need / 2**30:.1f} GiB, more than "
                    f"{CACHE_FRACTION:.0%} of the {free / 2**30:.1f} GiB of free memory; use data.cache = 'none'")
