"""`flowergan data ...`: shard, synth, fetch, verify."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from flowergan.cli.app import app

data_app = typer.Typer(no_args_is_help=True, help="Turn images into validated WebDataset shards.")
app.add_typer(data_app, name="data")

# Options shared by the commands that write shards (Annotated aliases keep each signature one line per few options).
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder for shards + manifest.json.")]
Size = Annotated[int, typer.Option("--size", help="Side of the square output images in pixels (64 and 128 are the "
                                                  "model sizes).")]
# Choices are Literal types so that --help lists them and click rejects others (tests check they match the data
# modules' FORMATS, CROPS, LAYOUTS and DATASETS).
ImageFormat = Literal["png", "jpg", "webp"]
Crop = Literal["center", "none"]
Layout = Literal["auto", "folders", "flat", "oxford102", "oxford17"]
DatasetName = Literal["oxford102", "oxford17", "tf-flowers"]
Format = Annotated[ImageFormat, typer.Option("--format", help="png: lossless, the default | jpg | webp (JPEG "
                                                              "artefacts raise FID).")]
Quality = Annotated[int, typer.Option("--quality", help="jpg/webp quality 1-100 (webp 100 = lossless).")]
Split = Annotated[str, typer.Option("--split", help="Keep only these splits, comma-separated (Oxford-102: "
                                                    "train,val,test); '' = all.")]
ShardSize = Annotated[int, typer.Option("--shard-size", help="Max samples per shard (0 = auto: <= 1000 and >= 32 "
                                                             "shards).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the shuffle across shards (synth: also of the drawings).")]
Workers = Annotated[int, typer.Option("--workers", "-j", help="Worker processes.")]
Force = Annotated[bool, typer.Option("--force", help="Write into a non-empty folder that holds no flowergan "
                                                     "manifest.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check the options, print what would be done, write "
                                                        "nothing.")]
WORKERS = min(4, os.cpu_count() or 1)


def _plan(what: str, **options) -> None:
    """The --dry-run answer: the options as resolved, one per line."""
    typer.echo(what)
    for k, v in options.items():
        typer.echo(f"  {k:<12} {v}")


def _shard_options(*, size: int, fmt: str, quality: int, crop: str = "center", min_size: int = 0, split: str,
                   shard_size: int, seed: int, workers: int, **extra):
    """ShardOptions from the command line, checked (so --dry-run fails on what the real run would fail on)."""
    from flowergan.data.ingest.images import ImageOptions
    from flowergan.data.ingest.sharder import ShardOptions, check_image_options

    opts = ShardOptions(image=ImageOptions(size=size, crop=crop, format=fmt, quality=quality, min_size=min_size),
                        shard_size=shard_size, seed=seed, workers=workers,
                        splits=tuple(s.strip() for s in split.split(",") if s.strip()), **extra)
    check_image_options(opts.image)
    return opts


@data_app.command()
def shard(
    src: Annotated[Path, typer.Argument(help="A folder of class folders, a flat folder, a .tar/.tar.gz/.tgz/.zip of "
                                             "either, or the Oxford-102 layout (jpg/ + imagelabels.mat + setid.mat).")],
    out: Out, size: Size = 64, fmt: Format = "png", quality: Quality = 95,
    crop: Annotated[Crop, typer.Option("--crop", help="center: centre-crop to a square | none: squeeze the whole "
                                                     "picture to a square.")] = "center",
    min_size: Annotated[int, typer.Option("--min-size", help="Reject images whose short side is below this (0 = "
                                                             "upscale small images, with a warning).")] = 0,
    layout: Annotated[Layout, typer.Option("--layout", help="How the source is organised (auto: detect it).")
                      ] = "auto",
    split: Split = "", name: Annotated[str, typer.Option("--name", help="Shard file prefix ('' = the source's "
                                                                         "name).")] = "",
    shard_size: ShardSize = 0, seed: Seed = 0, workers: Workers = WORKERS, force: Force = False,
    progress: Progress = True, dry_run: DryRun = False,
) -> None:
    """Turn a folder or archive of images into validated WebDataset shards + manifest.json."""
    from flowergan.data.ingest.sharder import shard_source

    opts = _shard_options(size=size, fmt=fmt, quality=quality, crop=crop, min_size=min_size, split=split,
                          shard_size=shard_size, seed=seed, workers=workers, layout=layout, name=name)
    if dry_run:
        _plan(f"would shard {src} -> {out}", size=size, format=fmt, quality=quality, crop=crop,
              min_size=min_size, layout=layout, splits=split or "all", shard_size=shard_size or "auto",
              seed=seed, workers=workers)
        return
    shard_source(src, out, opts, progress=progress, force=force)


@data_app.command()
def synth(
    out: Out, n: Annotated[int, typer.Option("--n", help="Number of images.")] = 4096, size: Size = 64,
    seed: Seed = 0, shard_size: ShardSize = 0, workers: Workers = WORKERS, force: Force = False,
    progress: Progress = True, dry_run: DryRun = False,
) -> None:
    """Write SynthFlowers: procedural flowers with 48 known modes (6 petal counts x 8 hues; the label)."""
    from flowergan.data.ingest.synth import write_synthflowers

    if dry_run:
        _plan(f"would write {n} SynthFlowers to {out}", size=size, seed=seed, shard_size=shard_size or "auto",
              workers=workers)
        return
    write_synthflowers(out, n=n, size=size, seed=seed, workers=workers, shard_size=shard_size, progress=progress,
                       force=force)


@data_app.command()
def fetch(
    dataset: Annotated[DatasetName, typer.Argument(help="The public data set to download.")],
    out: Out, size: Size = 64, fmt: Format = "png", quality: Quality = 95, split: Split = "",
    mirror: Annotated[str, typer.Option("--mirror", help="Base URL of a mirror holding the same files (checksums "
                                                         "are still verified).")] = "",
    keep_downloads: Annotated[bool, typer.Option("--keep-downloads", help="Keep the archives in "
                                                                          "OUT/.downloads.")] = False,
    shard_size: ShardSize = 0, seed: Seed = 0, workers: Workers = WORKERS, force: Force = False,
    progress: Progress = True, dry_run: DryRun = False,
) -> None:
    """Download a public flower data set (checksums verified, resumable), unpack it safely and shard it."""
    from flowergan.data.ingest.fetch import DATASETS
    from flowergan.data.ingest.fetch import fetch as fetch_dataset
    from flowergan.errors import UserError

    opts = _shard_options(size=size, fmt=fmt, quality=quality, split=split, shard_size=shard_size, seed=seed,
                          workers=workers)
    if dry_run:
        if dataset not in DATASETS:  # (the real run checks this in fetch_dataset)
            raise UserError(f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
        files = {f.url.rsplit("/", 1)[1]: (f"{mirror.rstrip('/')}/{f.url.rsplit('/', 1)[1]}" if mirror else f.url)
                 for f in DATASETS[dataset].files}
        _plan(f"would fetch {dataset} -> {out}: {DATASETS[dataset].about}", **files, size=size, format=fmt,
              splits=split or "all", workers=workers)
        return
    fetch_dataset(dataset, out, options=opts, mirror=mirror or None, keep_downloads=keep_downloads,
                  progress=progress, force=force)


@data_app.command()
def verify(path: Annotated[str, typer.Argument(help="A shard folder with manifest.json, its manifest, or a URL / "
                                                    "pipe: template as data.path takes it.")]) -> None:
    """Re-hash every shard and decode every sample; exit non-zero naming the first problem."""
    from flowergan.data.format import verify as verify_shards

    report = verify_shards(path)
    typer.echo(f"ok: {report['samples']} samples in {report['shards']} shards, {report['classes']} classes, "
               f"{report['resolution']}px")
