"""`flowergan data ...`: shard, synth, fetch, verify."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flowergan.cli import app

data_app = typer.Typer(no_args_is_help=True, help="Turn images into validated WebDataset shards.")
app.add_typer(data_app, name="data")

_SIZE = typer.Option(64, "--size", help="Side of the square output images in pixels (64 and 128 are the model sizes).")
_WORKERS = typer.Option(min(4, os.cpu_count() or 1), "--workers", "-j", help="Worker processes.")
_SHARD_SIZE = typer.Option(0, "--shard-size", help="Max samples per shard (0 = auto: <= 1000 and >= 32 shards).")
_SEED = typer.Option(0, "--seed", help="Seed of the shuffle across shards (synth: also of the drawings).")
_FORCE = typer.Option(False, "--force", help="Write into a non-empty folder that holds no flowergan manifest.")
_PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
_DRY_RUN = typer.Option(False, "--dry-run", help="Check the options, print what would be done, write nothing.")


def _plan(what: str, **options) -> None:
    """The --dry-run answer: the options as resolved, one per line."""
    typer.echo(what)
    for k, v in options.items():
        typer.echo(f"  {k:<12} {v}")


def _image_options(size: int, fmt: str, quality: int, crop: str, min_size: int):
    from flowergan.data.images import ImageOptions

    return ImageOptions(size=size, crop=crop, format=fmt, quality=quality, min_size=min_size)


@data_app.command()
def shard(
    src: Path = typer.Argument(..., help="A folder of class folders, a flat folder, a .tar/.tar.gz/.tgz/.zip of "
                                         "either, or the Oxford-102 layout (jpg/ + imagelabels.mat + setid.mat)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for shards + manifest.json."),
    size: int = _SIZE,
    fmt: str = typer.Option("png", "--format", help="png (lossless, default) | jpg | webp (JPEG artefacts raise FID)."),
    quality: int = typer.Option(95, "--quality", help="jpg/webp quality 1-100 (webp 100 = lossless)."),
    crop: str = typer.Option("center", "--crop", help="center: centre-crop to a square | none: squeeze the whole "
                                                      "picture to a square."),
    min_size: int = typer.Option(0, "--min-size", help="Reject images whose short side is below this (0 = upscale "
                                                       "small images, with a warning)."),
    layout: str = typer.Option("auto", "--layout", help="auto | folders | flat | oxford102 | oxford17."),
    split: str = typer.Option("", "--split", help="Keep only these splits, comma-separated (Oxford-102: train,val,"
                                                  "test); '' = all."),
    name: str = typer.Option("", "--name", help="Shard file prefix ('' = the source's name)."),
    shard_size: int = _SHARD_SIZE,
    seed: int = _SEED,
    workers: int = _WORKERS,
    force: bool = _FORCE,
    progress: bool = _PROGRESS,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Turn a folder or archive of images into validated WebDataset shards + manifest.json."""
    from flowergan.data.build import ShardOptions, check_image_options, shard_source

    opts = ShardOptions(image=_image_options(size, fmt, quality, crop, min_size), layout=layout,
                        shard_size=shard_size, seed=seed, workers=workers, name=name,
                        splits=tuple(s.strip() for s in split.split(",") if s.strip()))
    if dry_run:
        check_image_options(opts.image)
        _plan(f"would shard {src} -> {out}", size=size, format=fmt, quality=quality, crop=crop,
              min_size=min_size, layout=layout, splits=split or "all", shard_size=shard_size or "auto",
              seed=seed, workers=workers)
        return
    shard_source(src, out, opts, progress=progress, force=force)


@data_app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for shards + manifest.json."),
    n: int = typer.Option(4096, "--n", help="Number of images."),
    size: int = _SIZE,
    seed: int = _SEED,
    shard_size: int = _SHARD_SIZE,
    workers: int = _WORKERS,
    force: bool = _FORCE,
    progress: bool = _PROGRESS,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Write SynthFlowers: procedural flowers with 48 known modes (6 petal counts x 8 hues; the label)."""
    from flowergan.data.synth import write_synthflowers

    if dry_run:
        _plan(f"would write {n} SynthFlowers to {out}", size=size, seed=seed, shard_size=shard_size or "auto",
              workers=workers)
        return
    write_synthflowers(out, n=n, size=size, seed=seed, workers=workers, shard_size=shard_size, progress=progress,
                       force=force)


@data_app.command()
def fetch(
    dataset: str = typer.Argument(..., help="oxford102 | oxford17 | tf-flowers"),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for shards + manifest.json."),
    size: int = _SIZE,
    fmt: str = typer.Option("png", "--format", help="png | jpg | webp."),
    quality: int = typer.Option(95, "--quality", help="jpg/webp quality."),
    split: str = typer.Option("", "--split", help="Keep only these splits (oxford102: train,val,test)."),
    mirror: str = typer.Option("", "--mirror", help="Base URL of a mirror holding the same files (checksums are "
                                                    "still verified)."),
    keep_downloads: bool = typer.Option(False, "--keep-downloads", help="Keep the archives in OUT/.downloads."),
    shard_size: int = _SHARD_SIZE,
    seed: int = _SEED,
    workers: int = _WORKERS,
    force: bool = _FORCE,
    progress: bool = _PROGRESS,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Download a public flower data set (checksums verified, resumable), unpack it safely and shard it."""
    from flowergan.data.build import ShardOptions, check_image_options
    from flowergan.data.fetch import DATASETS
    from flowergan.data.fetch import fetch as fetch_dataset
    from flowergan.errors import UserError

    opts = ShardOptions(image=_image_options(size, fmt, quality, "center", 0), shard_size=shard_size, seed=seed,
                        workers=workers, splits=tuple(s.strip() for s in split.split(",") if s.strip()))
    if dry_run:
        if dataset not in DATASETS:
            raise UserError(f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
        check_image_options(opts.image)
        files = {f.url.rsplit("/", 1)[1]: (f"{mirror.rstrip('/')}/{f.url.rsplit('/', 1)[1]}" if mirror else f.url)
                 for f in DATASETS[dataset].files}
        _plan(f"would fetch {dataset} -> {out}: {DATASETS[dataset].about}", **files, size=size, format=fmt,
              splits=split or "all", workers=workers)
        return
    fetch_dataset(dataset, out, options=opts, mirror=mirror or None, keep_downloads=keep_downloads,
                  progress=progress, force=force)


@data_app.command()
def verify(path: Path = typer.Argument(..., help="A shard folder with manifest.json.")) -> None:
    """Re-hash every shard and decode every sample; exit non-zero naming the first problem."""
    from flowergan.data.shards import verify as verify_shards

    report = verify_shards(path)
    typer.echo(f"ok: {report['samples']} samples in {report['shards']} shards, {report['classes']} classes, "
               f"{report['resolution']}px")
