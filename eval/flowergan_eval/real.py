"""Real images for evaluation: every sample of a shard set once, in manifest order, never augmented.

The training stream resamples and flips; reference statistics need each image exactly once and unchanged,
so this module reads the shards the manifest lists directly. A sample that does not decode is reported by
shard and key and skipped; the good ones are kept.
"""

from __future__ import annotations

import sys
import tarfile
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
    def fingerprint(self) -> str:
        return str(self.manifest.get("fingerprint") or "")

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
        return {"data": self.path, "name": self.name, "fingerprint": self.fingerprint,
                "resolution": self.resolution, "num_samples": self.num_samples}


def open_real(path: str) -> RealSet:
    """The shard set at `path` (folder, manifest.json, URL or pipe: template), via its manifest."""
    from flowergan.data.shards import read_manifest

    if not path:
        raise UserError("--data is required: a shard folder with manifest.json (make one with `flowergan data "
                        "synth --out DIR` or `flowergan data shard SRC --out DIR`)")
    return RealSet(str(path), read_manifest(path))


def _open(url: str):
    if url.startswith("pipe:") or "://" not in url or url.startswith("file://"):
        import webdataset as wds

        return wds.gopen(url[len("file://"):] if url.startswith("file://") else url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def _samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of one tar shard, read as a stream (members are never written to disk)."""
    try:
        f = _open(url)
    except OSError as e:
        raise UserError(f"{url}: cannot open shard ({e})") from None
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                k, _, ext = base.partition(".")
                if k != key and key is not None:
                    yield key, parts
                    parts = {}
                key = k
                parts[ext] = tar.extractfile(member).read()
            if key is not None:
                yield key, parts
    except tarfile.TarError as e:
        raise UserError(f"{url}: damaged shard ({e}); run `flowergan data verify`") from None
    finally:
        f.close()


def _decode(data: bytes, resolution: int) -> np.ndarray:
    from flowergan.data.images import decode

    img = decode(data)  # PIL with its decompression-bomb guard for anything but our own fast-path PNGs
    if img.shape != (resolution, resolution, 3):
        raise ValueError(f"is {img.shape[1]}x{img.shape[0]}, the manifest says {resolution}x{resolution}")
    return img


def iter_real(real: RealSet, *, n: int = 0, batch: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 [B, 3, R, R], int64 labels [B]) of the first `n` decodable samples (0 = all), in manifest order."""
    from flowergan.data.shards import shard_url

    ext, res = real.manifest["image_format"], real.resolution
    want = n if n > 0 else real.num_samples
    images, labels, seen = [], [], 0
    for rec in real.manifest["shards"]:
        url = shard_url(real.path, rec["name"])
        for key, parts in _samples(url):
            try:
                if ext not in parts:
                    raise ValueError(f"has no .{ext} image")
                img = _decode(parts[ext], res)
                label = int(parts.get("cls", b"0"))
            except Exception as e:  # one bad sample must not cost the user the whole evaluation
                real.skipped.append(f"{rec['name']}:{key}: {e}")
                print(f"warning: skipping {rec['name']}:{key} ({e})", file=sys.stderr)
                continue
            images.append(img)
            labels.append(label)
            seen += 1
            if len(images) == batch or seen == want:
                yield torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)
                images, labels = [], []
            if seen == want:
                return
    if images:
        yield torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def load_real(real: RealSet, n: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first n) real images as one uint8 tensor [N, 3, R, R] and their labels."""
    batches = list(iter_real(real, n=n, batch=256))
    if not batches:
        raise UserError(f"{real.path}: no decodable images")
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def count(real: RealSet, n: int = 0) -> int:
    """How many real images an evaluation with `n` (0 = all) uses."""
    return min(n, real.num_samples) if n > 0 else real.num_samples
