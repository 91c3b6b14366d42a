"""`flowergan data fetch`: download a public flower data set, verify its checksum, unpack safely, shard.

Downloads go to `<out>/.downloads/` as `<file>.part`; an interrupted download resumes with an HTTP Range request.
A checksum mismatch deletes the part file and stops with one error line; shards appear in `<out>` only after
everything succeeded (see build.Staging), so no half-written data set is ever left behind.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from flowergan.data.digest import sha256_file
from flowergan.data.ingest import archives
from flowergan.data.ingest.sharder import ShardOptions, shard_source
from flowergan.errors import UserError
from flowergan.progress import progress_bar


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: where it lives, what it must hash to, and what to do with it."""

    url: str
    sha256: str
    size: int | None  # bytes, when a public record states it
    extract: bool  # unpack (archive) or copy beside the unpacked files


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    layout: str
    files: tuple[RemoteFile, ...]
    about: str


# Checksums: oxford102 and tf-flowers from TensorFlow Datasets' url_checksums records (oxford_flowers102.txt,
# tf_flowers.txt, which also give the sizes); 17flowers.tgz from intel/dffml's examples/flower17/dataset.sh
# (sha256 only: no public record of its size was found, so the size is not checked, the sha256 is).
DATASETS: dict[str, DatasetSpec] = {
    "oxford102": DatasetSpec("oxford102", "oxford102", (
        RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                   "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246", 344862509, True),
        RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                   "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d", 502, False),
        RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
                   "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd", 14989, False),
    ), "Oxford 102 Category Flower Dataset: 8,189 images, 102 classes, train/val/test split (Nilsback & "
       "Zisserman 2008)"),
    "oxford17": DatasetSpec("oxford17", "oxford17", (
        RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
                   "fe38a60f8b4a95e657551247d3e7d799a3fafcdbc595be504b12839967823d70", None, True),
    ), "Oxford 17 Category Flower Dataset: 1,360 images, 17 classes of 80 (Nilsback & Zisserman 2006)"),
    "tf-flowers": DatasetSpec("tf-flowers", "folders", (
        RemoteFile("https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
                   "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c", 228813984, True),
    ), "TensorFlow flower_photos: 3,670 photos in 5 class folders (CC-BY 2.0, see LICENSE.txt inside)"),
}

_CHUNK = 1 << 20
_ATTEMPTS = 4


def file_name(url: str) -> str:
    """The last path component of a URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _request(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "flowergan-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download(url: str, dest: Path, *, sha256: str, size: int | None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), check size and sha256; raise UserError on mismatch."""
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest  # already here and verified
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    with progress_bar(progress) as bar:
        task = bar.add_task(f"download {dest.name}", total=size)
        for _attempt in range(_ATTEMPTS):
            offset = part.stat().st_size if part.exists() else 0
            if size is not None and offset == size:
                break
            try:
                with _request(url, offset, timeout) as resp:
                    if offset and resp.status != 206:
                        offset = 0  # the server ignored the Range header: start again
                    length = resp.headers.get("Content-Length")
                    end = offset + int(length) if length is not None else None
                    if end is not None and bar.tasks[task].total is None:
                        bar.update(task, total=end)
                    bar.update(task, completed=offset)
                    with open(part, "ab" if offset else "wb") as f:
                        while chunk := resp.read(_CHUNK):
                            f.write(chunk)
                            bar.advance(task, len(chunk))
                            if size is not None and f.tell() > size:
                                break
                        if end is not None and f.tell() < end:  # the server hung up early
                            raise ConnectionError(f"connection closed after {f.tell()} of {end} bytes")
                last_error = None
                break
            except urllib.error.HTTPError as e:
                if e.code == 416 and offset:  # nothing left to send: the part file is complete (or too long)
                    last_error = None
                    break
                raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                last_error = e  # connection dropped: try again from where the part file ends
                time.sleep(0.2)
    if last_error is not None:
        raise UserError(f"{url}: download failed after {_ATTEMPTS} attempts ({last_error}); run the same command "
                        f"again to resume from {part.stat().st_size if part.exists() else 0} bytes")
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: got {got_size} bytes, expected {size}; the partial file was removed, try again")
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: checksum mismatch (sha256 {digest}, expected {sha256}); the download was removed")
    os.replace(part, dest)
    return dest


def fetch(name: str, out: str | Path, *, options: ShardOptions = ShardOptions(), mirror: str | None = None,
          keep_downloads: bool = False, progress: bool = True, force: bool = False,
          console: Console | None = None, spec: DatasetSpec | None = None) -> dict[str, Any]:
    """Download data set `name` (or a custom `spec`), unpack it safely and shard it into `out`; return the manifest.

    `mirror` replaces the directory of every URL (same file names, same checksums).
    """
    if spec is None:
        if name not in DATASETS:
            raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
        spec = DATASETS[name]
    console = console or Console()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    created = not out.exists()
    downloads = out / ".downloads"
    assembled = out / ".fetch-src"
    archives.remove_tree(assembled)
    ok = False
    try:
        local = []
        for rf in spec.files:
            url = rf.url if mirror is None else mirror.rstrip("/") + "/" + file_name(rf.url)
            local.append((rf, download(url, downloads / file_name(rf.url), sha256=rf.sha256, size=rf.size,
                                       progress=progress)))
        root = assembled / spec.name
        root.mkdir(parents=True)
        for rf, path in local:
            if rf.extract:
                with console.status(f"unpacking {path.name}"):
                    extracted = archives.extract(path, root)
                if extracted.refused:
                    first = extracted.refused[0]
                    console.print(f"refused {len(extracted.refused)} unsafe archive members (first: {first[0]}: "
                                  f"{first[1]})", markup=False)
            else:
                shutil.copyfile(path, root / path.name)
        opts = replace(options, layout=spec.layout, name=options.name or spec.name)
        info = {"path": spec.name, "dataset": spec.name, "urls": [rf.url for rf in spec.files],
                "sha256": {file_name(rf.url): rf.sha256 for rf in spec.files}}
        manifest = shard_source(root, out, opts, progress=progress, force=force, console=console, source_info=info)
        ok = True
    finally:
        archives.remove_tree(assembled)
        if not ok:  # keep .part files (the next run resumes them), drop empty folders we made
            for folder in (downloads, out) if created else (downloads,):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    if not keep_downloads:
        archives.remove_tree(downloads)
    return manifest
