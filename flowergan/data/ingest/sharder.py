"""`flowergan data shard`: any image source -> checked, normalised images -> shards + manifest, atomically.

Work happens in `<out>/.staging-*` and is moved into place at the end, so a failure never leaves half a data set.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flowergan.data.format import MANIFEST, make_manifest, read_manifest, write_manifest
from flowergan.data.ingest import archives
from flowergan.data.ingest.images import CROPS, FORMATS, ImageOptions, Rejected, process
from flowergan.data.ingest.sources import Item, Source, discover
from flowergan.data.ingest.writer import auto_shard_size, write_shards
from flowergan.errors import UserError
from flowergan.progress import progress_bar


@dataclass(frozen=True)
class ShardOptions:
    """Everything `flowergan data shard` can be told (besides source and output)."""

    image: ImageOptions = field(default_factory=ImageOptions)
    layout: str = "auto"
    shard_size: int = 0  # 0 = auto_shard_size
    seed: int = 0
    workers: int = 1
    name: str = ""  # shard file prefix; '' = from the source name
    splits: tuple[str, ...] = ()  # keep only these splits ('' = all)


def check_image_options(opts: ImageOptions) -> None:
    """Raise UserError naming the flag when an option is out of range."""
    if not 8 <= opts.size <= 4096:
        raise UserError(f"--size {opts.size}: choose 8..4096 (64 and 128 are the model resolutions)")
    if opts.format not in FORMATS:
        raise UserError(f"--format {opts.format!r}: choose one of {', '.join(FORMATS)}")
    if not 1 <= opts.quality <= 100:
        raise UserError(f"--quality {opts.quality}: choose 1..100")
    if opts.min_size < 0:
        raise UserError(f"--min-size {opts.min_size}: must be >= 0")
    if opts.crop not in CROPS:
        raise UserError(f"--crop {opts.crop!r}: choose one of {', '.join(CROPS)}")


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    return name[:40] or "data"


def _source_name(src: Path) -> str:
    name = src.name
    for suffix in archives.ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _safe_name(name)


@dataclass
class Staging:
    """A private folder inside --out for extraction and new shards; published or removed at the end."""

    out: Path
    path: Path
    made: list[Path]  # the folders open() created (--out and missing parents), deepest first

    @classmethod
    def open(cls, out: Path, force: bool) -> Staging:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        made = [p for p in (out, *out.parents) if not p.exists()]
        out.mkdir(parents=True, exist_ok=True)
        visible = [p for p in out.iterdir() if not p.name.startswith(".")]
        if visible and not (out / MANIFEST).is_file() and not force:
            raise UserError(f"--out {out}: the folder is not empty and holds no {MANIFEST}; "
                            "choose a new folder or pass --force")
        for old in out.glob(".staging-*"):  # left by a killed run
            archives.remove_tree(old)
        path = out / f".staging-{os.getpid()}"
        archives.remove_tree(path)
        path.mkdir()
        return cls(out, path, made)

    def publish(self, shards_dir: Path, manifest: dict[str, Any]) -> None:
        """Replace the previous data set in --out (if any) by the new shards, manifest last."""
        old_manifest = self.out / MANIFEST
        if old_manifest.is_file():
            try:
                old = read_manifest(self.out)
                old_names = [s["name"] for s in old["shards"]]
            except UserError:
                old_names = []
            old_manifest.unlink()
            for name in old_names:
                if "/" not in name and name.endswith(".tar"):
                    (self.out / name).unlink(missing_ok=True)
        for rec in manifest["shards"]:
            os.replace(shards_dir / rec["name"], self.out / rec["name"])
        write_manifest(self.out, manifest)

    def close(self) -> None:
        """Remove the staging folder, and the folders open() made if nothing else is in them (a failed run leaves
        no empty --out behind; a folder that was there before is never touched)."""
        archives.remove_tree(self.path)
        for folder in self.made:
            try:
                folder.rmdir()  # only an empty folder: a published data set stays
            except OSError:
                break


def _read_and_process(task: tuple[int, str, ImageOptions]) -> tuple[int, str | None, bytes | None, str | None]:
    """Worker: (index, path, options) -> (index, sha256 of the file or None, encoded image or None, note)."""
    index, path, opts = task
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return index, None, None, f"unreadable: {e.strerror or e}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        out = process(data, opts)
    except Rejected as e:
        return index, digest, None, str(e)
    except Exception as e:  # a decoder bug on one hostile file must not cost the other images
        return index, digest, None, f"could not process: {type(e).__name__}: {e}"
    return index, digest, out.data, out.warning


def parallel_map(fn: Callable, tasks: list, workers: int, chunksize: int = 8) -> Iterator:
    """`map` in `workers` processes (ordered results, so output never depends on scheduling)."""
    if workers <= 1 or len(tasks) <= chunksize:
        yield from map(fn, tasks)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(fn, tasks, chunksize=chunksize)


def _select_splits(source: Source, splits: tuple[str, ...]) -> list[Item]:
    if not splits:
        return source.items
    known = sorted({it.split for it in source.items})
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise UserError(f"--split {','.join(unknown)}: this source has the splits {', '.join(known)}")
    return [it for it in source.items if it.split in splits]


def shard_source(src: str | Path, out: str | Path, opts: ShardOptions = ShardOptions(), *, progress: bool = True,
                 force: bool = False, console: Console | None = None,
                 source_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turn a folder or archive of images into shards + manifest in `out`; return the manifest."""
    console = console or Console()
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    check_image_options(opts.image)
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    if src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise UserError(f"--out {out}: must not be inside the source folder {src}")
    staging = Staging.open(out, force)
    try:
        refused: list[tuple[str, str]] = []
        if archives.is_archive(src):
            with console.status(f"unpacking {src.name}"):
                extracted = archives.extract(src, staging.path / "src")
            refused = [(f"{src.name}:{name}", reason) for name, reason in extracted.refused]
            root = extracted.root
        elif src.is_dir():
            root = src
        else:
            raise UserError(f"{src}: not a folder or a .tar/.tar.gz/.tgz/.zip archive")
        source = discover(root, opts.layout)
        items = _select_splits(source, opts.splits)
        tasks = [(i, it.path, opts.image) for i, it in enumerate(items)]
        results: list[tuple[int, str | None, bytes | None, str | None]] = []
        with progress_bar(progress) as bar:
            task = bar.add_task("shard", total=len(tasks))
            for res in parallel_map(_read_and_process, tasks, opts.workers):
                results.append(res)
                bar.advance(task)

        samples, rejected, duplicates, warnings = [], [], [], []
        first_seen: dict[str, str] = {}
        hashes = []
        for index, digest, data, note in results:
            item = items[index]
            hashes.append(f"{item.rel}\t{digest or 'unreadable'}\n")
            if data is None or digest is None:
                rejected.append({"path": item.rel, "reason": note or "rejected"})
                continue
            if digest in first_seen:
                duplicates.append({"path": item.rel, "duplicate_of": first_seen[digest]})
                continue
            first_seen[digest] = item.rel
            if note:
                warnings.append({"path": item.rel, "warning": note})
            meta = {"src": item.rel, "class": source.classes[item.label], "split": item.split}
            samples.append({"data": data, "label": item.label, "meta": meta})
        rejected += [{"path": p, "reason": r} for p, r in source.rejected + refused]
        if not samples:
            first = rejected[0] if rejected else {"path": str(src), "reason": "no images"}
            raise UserError(f"{src}: no usable images ({len(rejected)} rejected; first: {first['path']}: "
                            f"{first['reason']})")
        fp = hashlib.sha256(f"{source.kind}\n".encode() + "".join(sorted(hashes)).encode()).hexdigest()
        info = {"path": str(src), "layout": source.kind, "files": len(items), "fingerprint": fp}
        info.update(source_info or {})
        return finish(staging, console, t0, samples=samples, classes=source.classes, kind="images",
                      name=opts.name or _source_name(src), image=opts.image, shard_size=opts.shard_size,
                      seed=opts.seed, source=info, rejected=rejected, duplicates=duplicates, warnings=warnings,
                      ignored=[{"path": p, "reason": r} for p, r in source.ignored])
    finally:
        staging.close()


def finish(staging: Staging, console: Console, started: float, *, samples: list[dict[str, Any]],
           classes: list[str], kind: str, name: str, image: ImageOptions, shard_size: int, seed: int,
           source: dict[str, Any], **reports: Any) -> dict[str, Any]:
    """Write shards + manifest in the staging folder, publish them into --out, print the summary; the manifest.

    `started`: time.perf_counter() when the command began (the summary's throughput).
    """
    shards_dir = staging.path / "shards"
    shard_size = shard_size or auto_shard_size(len(samples))
    shards = write_shards(samples, shards_dir, _safe_name(name), image.format, shard_size, seed)
    manifest = make_manifest(name=_safe_name(name), kind=kind, resolution=image.size, image_format=image.format,
                             quality=None if image.format == "png" else image.quality, crop=image.crop,
                             classes=classes, samples=samples, shards=shards, seed=seed, source=source, **reports)
    staging.publish(shards_dir, manifest)
    print_summary(console, manifest, staging.out, time.perf_counter() - started)
    return manifest


def _short(rows: Iterable[dict[str, str]], key: str, limit: int = 5) -> list[str]:
    rows = list(rows)
    lines = [f"  {r['path']}: {r[key]}" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more (all listed in {MANIFEST})")
    return lines


def print_summary(console: Console, manifest: dict[str, Any], out: Path, seconds: float) -> None:
    """The table printed at the end of shard/synth/fetch: images per class and split, problems, throughput."""
    counts = manifest["counts"]
    splits = list(counts["split"])
    console.print(f"[bold]{manifest['name']}[/]: {manifest['num_samples']} images, {manifest['resolution']}px "
                  f"{manifest['image_format']}, {len(manifest['shards'])} shards, {manifest['num_classes']} classes")
    table = Table()
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    shown = manifest["classes"] if len(manifest["classes"]) <= 20 else manifest["classes"][:20]
    for c in shown:
        table.add_row(c, *[str(counts["class_split"][c].get(s, 0)) for s in splits])
    if len(manifest["classes"]) > len(shown):
        table.add_row(f"... {len(manifest['classes']) - len(shown)} more classes", *[""] * len(splits))
    table.add_row("[bold]total", *[f"[bold]{counts['split'][s]}" for s in splits])
    console.print(table)
    size_mb = sum(s["bytes"] for s in manifest["shards"]) / 1e6
    rate = manifest["num_samples"] / seconds if seconds > 0 else 0.0
    console.print(f"kept {manifest['num_samples']}, rejected {len(manifest['rejected'])}, "
                  f"duplicates {len(manifest['duplicates'])}, upscaled/warnings {len(manifest['warnings'])}, "
                  f"ignored {len(manifest['ignored'])}; {size_mb:.1f} MB in {seconds:.1f} s ({rate:.0f} images/s)")
    for key, title, detail in (("rejected", "rejected:", "reason"), ("warnings", "warnings:", "warning"),
                               ("duplicates", "duplicates (kept once):", "duplicate_of")):
        if manifest[key]:
            console.print(title)
            for line in _short(manifest[key], detail):
                console.print(line, markup=False, highlight=False)
    console.print(f"wrote {out / MANIFEST}", markup=False, highlight=False)
