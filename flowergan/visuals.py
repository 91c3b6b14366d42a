"""Pictures of a run: sample grids, the progress GIF of fixed-noise grids, and loss curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """G's output in [-1, 1] -> uint8, round((x + 1) * 127.5) clamped: what a saved PNG holds.

    The same float operations as flowergan_eval.features.to_uint8, so both packages store identical pixels."""
    return (images.detach().float().clamp(-1, 1) * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def to_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> one [3, H, W] grid in [0, 1] (square-ish layout)."""
    n = images.shape[0]
    nrow = nrow or max(1, int(round(n**0.5)))
    return make_grid(images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=2)


def class_rows(images: torch.Tensor, names: list[str], cols: int) -> torch.Tensor:
    """Images in [-1, 1], `cols` per class in class order -> one [3, H, W] grid in [0, 1] with one row per class and
    the class's name at the left of its row (for a conditional G's samples)."""
    from PIL import ImageDraw

    grid = to_grid(images, nrow=cols)
    rows, pad = len(names), 2
    row_h = (grid.shape[1] - pad) // max(rows, 1)
    label_w = 8 + 6 * max((len(n) for n in names), default=0)  # PIL's default bitmap font: about 6 px a character
    canvas = Image.new("RGB", (label_w + grid.shape[2], grid.shape[1]), "white")
    pixels = (grid * 255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    canvas.paste(Image.fromarray(pixels), (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        draw.text((4, pad + i * row_h + row_h // 2 - 5), name, fill="black")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def save_png(grid: torch.Tensor, path: Path) -> None:
    """Write a [3, H, W] grid in [0, 1] as an 8-bit PNG (torchvision's save_image: round half up, as viewers do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)


def save_gif(frames: list[Path], path: Path, ms_per_frame: int = 250) -> bool:
    """An animated GIF of PNG frames (the fixed-noise grids over training); False if there are none."""
    if not frames:
        return False
    images = [Image.open(f).convert("RGB") for f in frames]
    # The last frame stays up longer so the final result is easy to look at.
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 6]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return True


def plot_losses(metrics_jsonl: Path, path: Path) -> bool:
    """Loss curves per iteration and per epoch from metrics.jsonl as one PNG; False without data."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    steps, epochs = [], []
    for line in metrics_jsonl.read_text().splitlines():
        rec = json.loads(line)
        if "Loss/D" in rec:
            steps.append(rec)
        if "Epoch/Loss_D" in rec:
            epochs.append(rec)
    if not steps:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ax.plot([r["step"] for r in steps], [r["Loss/D"] for r in steps], label="D")
    ax.plot([r["step"] for r in steps], [r["Loss/G"] for r in steps], label="G")
    ax.set(title="Loss per iteration", xlabel="step", ylabel="loss")
    ax.legend()
    ax = axes[1]
    if epochs:
        ax.plot([r["epoch"] for r in epochs], [r["Epoch/Loss_D"] for r in epochs], "o-", label="D")
        ax.plot([r["epoch"] for r in epochs], [r["Epoch/Loss_G"] for r in epochs], "o-", label="G")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "shorter than one epoch", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Loss per epoch (mean)", xlabel="epoch", ylabel="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
