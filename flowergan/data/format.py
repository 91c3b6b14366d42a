"""The shard format: names, manifest and verifier, the on-disk contract between ingest and everything that reads data.

A data set is a folder with `<name>-000000.tar ...` WebDataset shards (members `<key>.png|jpg|webp`, `<key>.cls`,
`<key>.json`) and a `manifest.json` that records counts, classes, resolution, and the sha256 of every shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from flowergan import __version__
from flowergan.errors import UserError
from flowergan.outputs import write_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAKE_HINT = ("make shards with `flowergan data synth --out DIR --n 4096 --size 64` or "
             "`flowergan data shard SRC --out DIR --size 64`")


def shard_fingerprint(shards: list[dict[str, Any]], resolution: int) -> str:
    """A short id of the shard files' bytes (which depend on the zlib build that wrote them)."""
    h = hashlib.sha256(f"flowergan-shards-v{FORMAT_VERSION}:{resolution}".encode())
    for s in shards:
        h.update(f"{s['name']}:{s['sha256']}\n".encode())
    return h.hexdigest()[:16]


def pixel_fingerprint(shards: list[dict[str, Any]], resolution: int) -> str:
    """A short id of the decoded images (the same on any zlib build: what evaluation caches key on); "" for shards
    written without it."""
    if not all("pixels_sha256" in s for s in shards):
        return ""
    h = hashlib.sha256(f"flowergan-pixels-v{FORMAT_VERSION}:{resolution}".encode())
    for s in shards:
        h.update(f"{s['name']}:{s['pixels_sha256']}\n".encode())
    return h.hexdigest()[:16]


def make_manifest(*, name: str, kind: str, resolution: int, image_format: str, quality: int | None, crop: str,
                  classes: list[str], samples: list[dict[str, Any]], shards: list[dict[str, Any]], seed: int,
                  source: dict[str, Any], rejected: list[dict[str, str]] | None = None,
                  duplicates: list[dict[str, str]] | None = None, warnings: list[dict[str, str]] | None = None,
                  ignored: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The manifest dict (deterministic: no timestamps, sorted lists)."""
    per_class = Counter(s["label"] for s in samples)
    per_split = Counter(s["meta"].get("split", "all") for s in samples)
    class_split: dict[str, dict[str, int]] = {}
    for s in samples:
        row = class_split.setdefault(classes[s["label"]], {})
        split = s["meta"].get("split", "all")
        row[split] = row.get(split, 0) + 1
    return {
        "format_version": FORMAT_VERSION,
        "tool": f"flowergan {__version__}",
        "name": name,
        "kind": kind,
        "resolution": resolution,
        "image_format": image_format,
        "quality": quality,
        "crop": crop,
        "num_samples": len(samples),
        "num_classes": len(classes),
        "classes": classes,
        "counts": {
            "class": {c: per_class.get(i, 0) for i, c in enumerate(classes)},
            "split": dict(sorted(per_split.items())),
            "class_split": {c: dict(sorted(class_split.get(c, {}).items())) for c in classes},
        },
        "seed": seed,
        "shards": shards,
        "shard_fingerprint": shard_fingerprint(shards, resolution),
        "pixel_fingerprint": pixel_fingerprint(shards, resolution),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,  # shard bytes are reproducible with the same zlib build
        "source": source,
        "rejected": sorted(rejected or [], key=lambda r: r["path"]),
        "duplicates": sorted(duplicates or [], key=lambda r: r["path"]),
        "warnings": sorted(warnings or [], key=lambda r: r["path"]),
        "ignored": sorted(ignored or [], key=lambda r: r["path"]),
    }


def fingerprints(manifest: dict[str, Any]) -> dict[str, str]:
    """A manifest's two ids by their names: `shard_fingerprint` (the shard files' bytes; manifests written before
    the two were named apart call it `fingerprint`) and `pixel_fingerprint` (the decoded images; "" if absent)."""
    return {"shard_fingerprint": str(manifest.get("shard_fingerprint") or manifest.get("fingerprint") or ""),
            "pixel_fingerprint": str(manifest.get("pixel_fingerprint") or "")}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically."""
    return write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def is_url(path: str) -> bool:
    """True for pipe: commands and scheme://... URLs (anything that is not a local path)."""
    return path.startswith("pipe:") or ("://" in path and not path.startswith("file://"))


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def manifest_location(path: str) -> str:
    """Where the manifest of data path `path` lives (a folder, a manifest file, a URL, or a pipe: template)."""
    if path.startswith("pipe:"):
        if "{file}" not in path:
            raise UserError(f"data path {path!r}: a pipe: path needs a {{file}} placeholder for the file name, "
                            "e.g. 'pipe:curl -fsS https://host/flowers64/{file}'")
        return path.replace("{file}", MANIFEST)
    if path.endswith(".json"):
        return path
    return path.rstrip("/") + "/" + MANIFEST


def shard_url(path: str, shard_name: str) -> str:
    """The URL or local path of one shard of data path `path`."""
    if path.startswith("pipe:"):
        return path.replace("{file}", shard_name)
    if path.endswith(".json"):
        base = path.rsplit("/", 1)[0] if "/" in path else "."
    else:
        base = path.rstrip("/")
    return (base if is_url(base) else _local(base)) + "/" + shard_name


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check `<path>/manifest.json` (path: shard folder, manifest file, fsspec URL or pipe: template)."""
    from flowergan.data.loader.shard_reader import ShardError, read_bytes

    location = manifest_location(str(path))
    try:
        text = read_bytes(_local(location))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise UserError(f"{path}: no {MANIFEST} found at {location}; {MAKE_HINT}") from None
    except (OSError, ShardError) as e:
        raise UserError(f"{path}: cannot read {location} ({e}); {MAKE_HINT}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{location}: not valid JSON ({e}); re-create the shards") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{location}: not a flowergan manifest (expected a JSON object)")
    for key in ("format_version", "resolution", "num_samples", "num_classes", "shards", "image_format"):
        if key not in manifest:
            raise UserError(f"{location}: not a flowergan manifest (missing {key!r}); {MAKE_HINT}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise UserError(f"{location}: written by a newer flowergan (format {manifest['format_version']}); upgrade")
    if not manifest["shards"] or manifest["num_samples"] < 1:
        raise UserError(f"{location}: the manifest lists no samples; {MAKE_HINT}")
    return manifest


def verify(path: str | Path) -> dict[str, Any]:
    """Re-hash every shard and decode every sample against the manifest; raise UserError naming the first problem.

    `path` is any data path (folder, manifest, URL, pipe: template); each shard is read once, through the same
    shard reader as training, hashed as it is parsed, and its samples checked only once the hash matches (a
    changed file is the more useful news). Images are decoded with Pillow, not flowergan's own PNG decoder, so a
    pass also means any PNG reader takes them.
    """
    from PIL import Image

    from flowergan.data.loader.shard_reader import iter_samples

    manifest = read_manifest(path)
    res, ext, k = manifest["resolution"], manifest["image_format"], manifest["num_classes"]
    per_class: Counter[int] = Counter()
    total = 0
    for rec in manifest["shards"]:
        url = shard_url(str(path), rec["name"])
        digest = hashlib.sha256()
        samples = list(iter_samples(url, digest=digest))  # <= 1000 small images: a few MB
        if digest.hexdigest() != rec["sha256"]:
            raise UserError(f"{url}: sha256 {digest.hexdigest()[:16]}... does not match the manifest "
                            f"({rec['sha256'][:16]}...)")
        count = 0
        for sample in samples:
            key = f"{rec['name']}:{sample['__key__']}"
            if ext not in sample or "cls" not in sample:
                raise UserError(f"{key}: missing the .{ext} or .cls member")
            try:
                with Image.open(io.BytesIO(sample[ext])) as img:
                    img.load()
                    size, mode = img.size, img.mode
            except Exception as e:
                raise UserError(f"{key}: image does not decode ({e})") from None
            if size != (res, res) or mode != "RGB":
                raise UserError(f"{key}: image is {mode} {size[0]}x{size[1]}, manifest says RGB {res}x{res}")
            try:
                label = int(sample["cls"])
                json.loads(sample.get("json", b"{}"))
            except ValueError as e:
                raise UserError(f"{key}: bad .cls or .json member ({e})") from None
            if not 0 <= label < k:
                raise UserError(f"{key}: label {label} is outside 0..{k - 1}")
            per_class[label] += 1
            count += 1
        if count != rec["samples"]:
            raise UserError(f"{url}: holds {count} samples, the manifest says {rec['samples']}")
        total += count
    if total != manifest["num_samples"]:
        raise UserError(f"{path}: shards hold {total} samples, the manifest says {manifest['num_samples']}")
    expected = manifest.get("counts", {}).get("class", {})
    for i, name in enumerate(manifest.get("classes", [])):
        if name in expected and expected[name] != per_class.get(i, 0):
            raise UserError(f"{path}: class {name!r} has {per_class.get(i, 0)} samples, "
                            f"the manifest says {expected[name]}")
    return {"shards": len(manifest["shards"]), "samples": total, "classes": k, "resolution": res}
