"""Reference statistics of real images, cached on disk and in memory.

The cache key hashes everything the numbers depend on: the data fingerprint (of the decoded pixels, else the
sha256 of every shard), the resolution, the extractor's weights (sha256), the resize mode and the number of
images. A cache file is written to a temporary name and renamed with os.replace, so a crash or a parallel
writer never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowergan.outputs import write_atomic
from flowergan_eval import features as FT
from flowergan_eval import metrics as M
from flowergan_eval.real import RealSet, count, iter_real
from flowergan_eval.weights import cache_dir

STATS_VERSION = 1
_MEMORY: dict[str, Reference] = {}


@dataclass
class Reference:
    """Features and FID statistics of the real images, with where they came from."""

    pool: np.ndarray  # [N, 2048] float32 (KID, PRDC and the diversity measures need the features themselves)
    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any]
    path: Path | None = None
    cached: bool = False
    labels: np.ndarray | None = None  # [N] int64, the class of each row of pool (None: an older cache file)

    @property
    def n(self) -> int:
        return len(self.pool)

    def as_dict(self) -> dict[str, np.ndarray]:
        out = {"pool": self.pool, "mu": self.mu, "sigma": self.sigma}
        return out if self.labels is None else {**out, "labels": self.labels}


def cache_key(fingerprint: str, resolution: int, weights_sha256: str, resize: str, n: int) -> str:
    """Hash of everything reference statistics depend on."""
    text = json.dumps({"v": STATS_VERSION, "data": fingerprint, "resolution": resolution,
                       "extractor": weights_sha256, "resize": resize, "n": n}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def stats_path(key: str) -> Path:
    return cache_dir() / "stats" / f"ref-{key}.npz"


def _save(path: Path, ref: Reference) -> None:
    arrays: dict[str, Any] = {"pool": ref.pool, "mu": ref.mu, "sigma": ref.sigma,
                              "meta": np.array(json.dumps(ref.meta))}
    if ref.labels is not None:
        arrays["labels"] = ref.labels
    write_atomic(path, lambda f: np.savez(f, **arrays))


def _load(path: Path) -> Reference | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"] if "labels" in z.files else None
            return Reference(z["pool"], z["mu"], z["sigma"], json.loads(str(z["meta"])), path=path, cached=True,
                             labels=labels)
    except (OSError, ValueError, KeyError):  # unreadable or from an older layout: recompute
        return None


def resize_of(extractor: Any, resolution: int) -> str:
    """How an extractor resizes the images it reads (part of the cache key and of every number's provenance)."""
    return str(getattr(extractor, "resize", None) or f"{FT.RESIZE_MODE} {resolution}->{FT.INPUT_SIZE}")


def _key(real: RealSet, extractor: Any, n_used: int) -> str:
    resize = resize_of(extractor, real.resolution)
    return cache_key(real.cache_id, real.resolution, extractor.weights_sha256, resize.split(" ")[0], n_used)


def is_cached(real: RealSet, extractor: Any, n: int = 0) -> bool:
    """Whether the reference statistics of the first `n` real images (0 = all) are cached (no real image to read)."""
    key = _key(real, extractor, count(real, n))
    return key in _MEMORY or bool(real.cache_id and stats_path(key).is_file())


def reference(real: RealSet, extractor: Any, *, n: int = 0, batch: int = 64,
              progress=None, use_cache: bool = True, recompute: bool = False, labels: bool = False) -> Reference:
    """Features and statistics of the first `n` real images (0 = all), from the cache when possible; `labels`:
    the per-class metrics need each image's class, which cache files written before them lack (recomputed)."""
    n_used = count(real, n)
    resize = resize_of(extractor, real.resolution)
    key = _key(real, extractor, n_used)
    path = stats_path(key)
    if use_cache and not recompute:
        if key in _MEMORY and not (labels and _MEMORY[key].labels is None):
            return _MEMORY[key]
        if real.cache_id and path.is_file():
            ref = _load(path)
            if ref is not None and not (labels and ref.labels is None):
                _MEMORY[key] = ref
                return ref
    seen: list[np.ndarray] = []

    def images() -> Iterator[torch.Tensor]:
        for x, y in iter_real(real, n=n_used, batch=batch):
            seen.append(y.numpy())
            yield x

    feats = FT.extract(extractor, images(), n_used, progress=progress, description="real features")
    mu, sigma = M.feature_stats(feats.pool)
    meta = {**real.describe(), "n": len(feats), "skipped": len(real.skipped), "extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256, "resize": resize, "key": key}
    ref = Reference(feats.pool, mu, sigma, meta, path=None, cached=False,
                    labels=np.concatenate(seen).astype(np.int64))
    # Without a fingerprint (a hand-made manifest) the contents are unknown, so nothing is cached.
    if use_cache and real.cache_id:
        _save(path, ref)
        ref.path = path
        _MEMORY[key] = ref
    return ref
