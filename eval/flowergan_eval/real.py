"""Real images for evaluation: every sample of a shard set once, in manifest order, never augmented.

The training stream resamples and flips; reference statistics need each image exactly once and unchanged,
so this module reads the shards the manifest lists in order, through the same shard reader and decoder as
training (flowergan.data.loader.shard_reader and .decode). A sample that does not decode is reported by shard and
key and skipped; the good ones are kept.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flowergan.errors import UserError


@dataclass
class RealSet:
    """A shard set as the manifest describes it."""

    path: str
    manifest: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # "<shard>:<key>: reason" of samples that did not decode

    @property
    def pixel_fingerprint(self) -> str:
        """The decoded images' id from the manifest ("" for shards written before it existed)."""
        from flowergan.data.format import fingerprints

        return fingerprints(self.manifest)["pixel_fingerprint"]

    @property
    def shard_fingerprint(self) -> str:
        """The shard files' id from the manifest."""
        from flowergan.data.format import fingerprints

        return fingerprints(self.manifest)["shard_fingerprint"]

    @property
    def cache_id(self) -> str:
        """What caches (reference statistics, oracles) key on: the pixel fingerprint, equal across zlib builds, so
        caches are shared; the shard fingerprint for manifests that have no pixel one; "" for neither."""
        return self.pixel_fingerprint or self.shard_fingerprint

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes") or [str(i) for i in range(self.num_classes)])

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.path)

    def describe(self) -> dict[str, Any]:
        """Provenance of this reference set, for every reported number."""
        return {"data": self.path, "name": self.name, "pixel_fingerprint": self.pixel_fingerprint,
                "shard_fingerprint": self.shard_fingerprint,
                "resolution": self.resolution, "num_samples": self.num_samples}


def open_real(path: str) -> RealSet:
    """The shard set at `path` (folder, manifest.json, URL or pipe: template), via its manifest."""
    from flowergan.data.format import read_manifest

    if not path:
        raise UserError("--data is required: a shard folder with manifest.json (make one with `flowergan data "
                        "synth --out DIR` or `flowergan data shard SRC --out DIR`)")
    return RealSet(str(path), read_manifest(path))


def _good(real: RealSet, raw: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Decode `raw` samples; report and drop the ones that fail (one bad sample must not cost the evaluation)."""
    from flowergan.data.loader.decode import decode_batch

    x, y, bad = decode_batch(raw, real.manifest["image_format"], real.resolution)
    for k, reason in bad:
        where = f"{raw[k]['__url__'].rsplit('/', 1)[-1]}:{raw[k]['__key__']}"
        real.skipped.append(f"{where}: {reason}")
        print(f"warning: skipping {where} ({reason})", file=sys.stderr)
    keep = np.setdiff1d(np.arange(len(raw)), [k for k, _ in bad])
    return x[keep], y[keep]


def _decoded(real: RealSet, want: int, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The first `want` decodable samples in manifest order, a chunk at a time; nothing past them is read."""
    from flowergan.data.format import shard_url
    from flowergan.data.loader.shard_reader import iter_samples

    have = 0
    for rec in real.manifest["shards"]:
        samples = iter_samples(shard_url(real.path, rec["name"]))
        try:
            raw: list[dict] = []
            for sample in samples:
                raw.append(sample)
                if len(raw) >= min(chunk, want - have):
                    x, y = _good(real, raw)
                    raw, have = [], have + len(x)
                    yield x, y
                    if have == want:
                        return
            if raw:
                x, y = _good(real, raw)
                have += len(x)
                yield x, y
        finally:
            samples.close()


def iter_real(real: RealSet, *, n: int = 0, batch: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 [B, 3, R, R], int64 labels [B]) of the first `n` decodable samples (0 = all), in manifest order."""
    want = n if n > 0 else real.num_samples
    x = np.empty((0, real.resolution, real.resolution, 3), np.uint8)
    y = np.empty(0, np.int64)
    for x_new, y_new in _decoded(real, want, batch):
        x, y = np.concatenate([x, x_new]), np.concatenate([y, y_new])
        while len(x) >= batch:
            yield torch.from_numpy(x[:batch]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y[:batch])
            x, y = x[batch:], y[batch:]
    if len(x):
        yield torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)


def load_real(real: RealSet, n: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first n) real images as one uint8 tensor [N, 3, R, R] and their labels."""
    batches = list(iter_real(real, n=n, batch=256))
    if not batches:
        raise UserError(f"{real.path}: no decodable images")
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def count(real: RealSet, n: int = 0) -> int:
    """How many real images an evaluation with `n` (0 = all) uses."""
    return min(n, real.num_samples) if n > 0 else real.num_samples
