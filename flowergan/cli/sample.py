"""`flowergan sample`: a grid PNG, one PNG per image, or one npz of uint8, from a checkpoint or an export."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import typer

from flowergan.cli.app import app
from flowergan.errors import UserError
from flowergan.outputs import check_free, publish, remove, temporary_beside

if TYPE_CHECKING:
    import torch

GRID_MAX = 4096
Batches = Iterator["torch.Tensor"]  # uint8 [b, 3, H, W] on the CPU, in index order


SampleFormat = Literal["grid", "png", "npz"]
DEFAULT_OUT: dict[str, Path] = {"grid": Path("grid.png"), "png": Path("samples"), "npz": Path("samples.npz")}


@app.command()
def sample(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="An export folder, a checkpoint directory, or a run dir (its "
                                                      "newest checkpoint).")],
    fmt: Annotated[SampleFormat, typer.Option("--format", help="grid: one PNG of all images | png: a folder of "
                                                               "NNNNNN.png | npz: one file, `images` uint8 "
                                                               "[N, H, W, 3].")] = "grid",
    n: Annotated[int, typer.Option("--n", min=1, help=f"Images (grid: at most {GRID_MAX}).")] = 64,
    # 256, not flowergan-eval's 64: here the images go through G alone, with no feature extractor after it.
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images generated and written per step (the images "
                                                              "do not depend on it; G alone, so larger than "
                                                              "flowergan-eval's).")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed of z: image i depends only on (seed, i).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="File (grid, npz) or folder (png) to write; default "
                                                           "grid.png, samples/, samples.npz.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="A checkpoint's raw G instead of its EMA.")] = False,
    device: Annotated[str, typer.Option("--device", help="Where G runs: auto (CUDA if present), cpu, cuda, "
                                                         "cuda:N (the last bit of a pixel may differ between "
                                                         "devices).")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    klass: Annotated[str | None, typer.Option("--class", help="A conditional G's class: a name or an index; "
                                                              "several comma-separated are taken in turn.")] = None,
    per_class: Annotated[int | None, typer.Option("--per-class", min=1, help="K images of every class (or of each "
                                                                             "--class), in class order; replaces "
                                                                             "--n; a grid has one row per class, "
                                                                             "named.")] = None,
) -> None:
    """Generate flowers: a grid PNG, individual PNG files, or one npz of uint8, streamed to disk in batches."""
    from flowergan.artifacts import open_generator
    from flowergan.devices import pick_device
    from flowergan.generation import iter_samples

    out = out or DEFAULT_OUT[fmt]
    conditional = klass is not None or per_class is not None
    if fmt == "grid" and n > GRID_MAX and not conditional:
        raise UserError(f"--n {n}: a grid holds at most {GRID_MAX} images; use --format png or npz for more")
    check_free(out, force)
    dev = pick_device(device)
    G = open_generator(ckpt, ema=not raw, device=dev)
    wanted: list[int] = []
    rows: list[str] = []
    if conditional:  # a conditional G: which class each image is (--per-class replaces --n)
        from flowergan.cli.classes import sample_classes

        n, wanted, rows = sample_classes(G, klass, per_class, n)
        if fmt == "grid" and n > GRID_MAX:
            raise UserError(f"{n} images: a grid holds at most {GRID_MAX}; use fewer --per-class, or --format png")
    tmp = temporary_beside(out, directory=fmt == "png")
    try:
        if conditional:
            from flowergan.cli.classes import class_samples

            samples = class_samples(G, n, wanted, per_class, seed=seed, batch=batch, device=dev)
        else:
            samples = iter_samples(G, n, seed=seed, batch=batch, device=dev)
        batches = _with_progress(samples, n, progress)
        if fmt == "grid" and per_class is not None:
            write_class_grid(batches, rows, per_class, tmp)
        else:
            WRITERS[fmt](batches, n, tmp)
        publish(tmp, out)
    except BaseException:
        remove(tmp)
        raise
    typer.echo(f"wrote {out} ({n} images, {fmt}, seed {seed}{', raw G' if raw else ''})")


def _with_progress(batches: Batches, n: int, enabled: bool) -> Batches:
    from flowergan.progress import progress_bar

    with progress_bar(enabled, stderr=True) as bar:
        task = bar.add_task("sample", total=n)
        for images in batches:
            yield images
            bar.advance(task, len(images))


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def write_grid(batches: Batches, n: int, path: Path) -> None:
    """All images in one PNG grid (at most GRID_MAX images, so they fit in memory)."""
    import torch

    from flowergan import visuals

    images = torch.cat(list(batches))
    visuals.save_png(visuals.to_grid(images.float() / 127.5 - 1.0), path)


def write_class_grid(batches: Batches, names: list[str], per_class: int, path: Path) -> None:
    """`per_class` images of each class in one PNG, a row per class with its name at the left."""
    import torch

    from flowergan import visuals

    images = torch.cat(list(batches))
    visuals.save_png(visuals.class_rows(images.float() / 127.5 - 1.0, names, per_class), path)


def write_pngs(batches: Batches, n: int, folder: Path) -> None:
    """One lossless RGB PNG per image, 000000.png, 000001.png, ... in index order."""
    from PIL import Image

    width, i = max(6, len(str(n - 1))), 0
    for images in batches:
        for arr in _hwc(images):
            Image.fromarray(arr).save(folder / f"{i:0{width}d}.png")
            i += 1


def write_npz(batches: Batches, n: int, path: Path) -> None:
    """One npz holding `images` uint8 [n, H, W, 3], filled batch by batch through a memory-mapped .npy."""
    npy = path.with_name(path.name + ".npy")
    try:
        arr, lo = None, 0
        for images in batches:
            hwc = _hwc(images)
            if arr is None:
                arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(n, *hwc.shape[1:]))
            arr[lo:lo + len(hwc)] = hwc
            lo += len(hwc)
        assert arr is not None
        arr.flush()
        del arr
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.write(npy, "images.npy")
    finally:
        npy.unlink(missing_ok=True)


WRITERS = {"grid": write_grid, "png": write_pngs, "npz": write_npz}
