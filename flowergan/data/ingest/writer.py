"""Write samples as balanced WebDataset shards whose bytes depend only on the samples, the seed and zlib.

Deflate output is not the same across zlib builds (zlib-ng, the system zlib of newer distributions, compresses
differently), so each shard record also carries the sha256 of its decoded pixels: equal on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from flowergan.data.digest import sha256_file
from flowergan.data.ingest.images import decode

# Fixed tar member metadata, so the same samples always give byte-identical shards.
_TAR_MTIME = 0  # an int: a float mtime makes tarfile add a PAX header to every member (slow to read)
_TAR_OWNER = "flowergan"


def auto_shard_size(n: int) -> int:
    """Samples per shard: at most 1000, and at least 32 shards when there are enough images (>= 8 per shard)."""
    n_shards = max(math.ceil(n / 1000), min(32, math.ceil(n / 8)), 1)
    return math.ceil(n / n_shards)


def write_shards(samples: list[dict[str, Any]], folder: Path, name: str, ext: str, shard_size: int,
                 seed: int) -> list[dict[str, Any]]:
    """Shuffle `samples` (dicts with data, label, meta) with `seed`, write balanced shards; return shard records.

    Shard sizes differ by at most one sample. The same samples and seed give byte-identical tar files.
    """
    import webdataset as wds

    if not samples:
        raise ValueError("no samples to write")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_shards = math.ceil(len(samples) / max(1, shard_size))
    base, extra = divmod(len(samples), n_shards)
    records, pos = [], 0
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        count = base + (s < extra)
        pixels = hashlib.sha256()
        shard_name = f"{name}-{s:06d}.tar"
        path = folder / shard_name
        with open(path, "wb") as f, wds.TarWriter(f, user=_TAR_OWNER, group=_TAR_OWNER, mode=0o444,
                                                  mtime=_TAR_MTIME, encoder=False) as tw:
            for idx in order[pos:pos + count]:
                sample = samples[int(idx)]
                key = f"{pos:07d}"
                meta = json.dumps(sample["meta"], sort_keys=True, ensure_ascii=False).encode()
                tw.write({"__key__": key, ext: sample["data"], "cls": str(sample["label"]).encode(), "json": meta})
                pixels.update(key.encode() + decode(sample["data"]).tobytes())
                pos += 1
        records.append({"name": shard_name, "samples": count, "bytes": path.stat().st_size,
                        "sha256": sha256_file(path), "pixels_sha256": pixels.hexdigest()})
    return records
