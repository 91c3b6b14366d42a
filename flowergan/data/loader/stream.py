"""One rank's batch stream: `build_stream` turns `[data]` + a manifest into a Plan and a loader behind `Stream`.

`Stream` is what the training loop sees (`protocol.BatchStream`): equal batches per rank, deterministic, resumable.
Which samples make each batch is `plan.py`; how they get there is `uncached.py` (read shards as you go,
`data.cache = "none"`) or `cached.py` (decode once, keep in RAM or on the GPU; it also resolves "auto").
Shard URLs: local paths, `file://`, `pipe:` commands with a `{file}` placeholder, http(s) and fsspec URLs, all
opened by `shard_reader.py`. Rank and world size come from the caller: no Ray or torch.distributed import here.

Resume: `Stream.iter_from(k)` yields exactly what `iter(stream)` yields from its k-th batch on (0-based), without
decoding the skipped batches (whole epochs are skipped by arithmetic, the rest of one epoch by reading raw bytes),
so a resumed run sees bit-identical batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from flowergan.data.format import MAKE_HINT, read_manifest, shard_url
from flowergan.data.loader.cached import CachedBatches, check_memory, resolve_cache
from flowergan.data.loader.plan import Plan
from flowergan.data.loader.protocol import Batch
from flowergan.data.loader.uncached import ShardBatches
from flowergan.devices import normalize
from flowergan.errors import UserError


class Stream:
    """Endless batches `(x float32 [B,3,R,R] in [-1,1] on device, labels int64 [B])` for one rank.

    `num_samples` (images in the data set), `batches_per_epoch` (= num_samples // (B * world), at least 1),
    `num_classes`, `classes`, `class_counts` (images per class), `manifest`, `plan`, `cache` (the one in use, "auto"
    resolved). `iter(stream)` starts at batch 0; `stream.iter_from(k)` at batch k.
    """

    def __init__(self, plan: Plan, manifest: dict[str, Any], batches: Callable[[int], Iterator[Batch]],
                 about: str, cache: str = "none"):
        self.plan, self.manifest, self._batches, self._about = plan, manifest, batches, about
        self.cache = cache  # the cache in use: "none", "memory" or "device" ("auto" resolved)
        self.num_samples = plan.num_samples
        self.batches_per_epoch = plan.batches_per_epoch
        self.num_classes = int(manifest["num_classes"])
        self.classes = list(manifest.get("classes", []))
        # Images per class in label order: the frequencies a conditional G's fake classes follow (train.fake_classes).
        counted = manifest.get("counts", {}).get("class", {})
        self.class_counts = [int(counted.get(c, 0)) for c in self.classes] if counted else [1] * len(self.classes)

    def __repr__(self) -> str:
        return (f"Stream({self.num_samples} images, {self.num_classes} classes, {self.manifest['resolution']}px, "
                f"batch {self.plan.batch_size} x {self.plan.world_size} ranks, {self.batches_per_epoch} "
                f"batches/epoch, {self._about})")

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        """Batches from global batch `batch_index` on (0-based, counted over epochs), forever."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        return self._batches(batch_index)


def build_stream(cfg, *, batch_size: int, resolution: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: torch.device | None = None) -> Stream:
    """The batch stream of one rank for DataConfig `cfg` (see plan.py for which samples each batch holds)."""
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
    plan = Plan(urls, counts, batch_size, rank, world_size, max(1, workers), seed, int(cfg.shuffle_buffer))
    device = normalize(device if device is not None else "cpu")  # "cuda" is cuda:N, as the cached set says
    hflip, jitter, ext = float(cfg.hflip), float(cfg.color_jitter), manifest["image_format"]
    cache = resolve_cache(cfg.cache, plan.num_samples, resolution, device)
    if cache == "none":
        readers = world_size * max(1, workers)
        if len(urls) < readers:
            raise UserError(f"data.path {path} has {len(urls)} shards but {world_size} ranks x {max(1, workers)} "
                            f"loader workers need at least {readers} (each reads its own shards); re-shard with a "
                            f"smaller --shard-size, lower data.workers, or set data.cache = 'memory'")
        batches: Callable[[int], Iterator[Batch]] = ShardBatches(
            plan, ext, resolution, loader_workers=workers, hflip=hflip, jitter=jitter, device=device)
    else:
        check_memory(plan.num_samples, resolution, cache, device)
        batches = CachedBatches(plan, ext, resolution, cache=cache, loader_workers=workers, hflip=hflip,
                                jitter=jitter, device=device)
    chosen = f"cache={cache}" + (" (auto)" if cfg.cache == "auto" else "")
    return Stream(plan, manifest, batches, f"{chosen}, workers={workers}", cache)
