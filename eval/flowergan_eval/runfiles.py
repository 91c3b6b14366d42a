"""What the report reads from a run besides its checkpoint: the fixed-noise sample grids over training (the frames
of progress.gif) and the recipe of the run's resolved config."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

# The settings that make a recipe, as (section, field, label); the page lists every other field below them.
RECIPE = (("model", "resolution", "resolution"), ("model", "nz", "nz"), ("model", "ngf", "ngf"),
          ("model", "ndf", "ndf"), ("model", "g_upsample", "G upsampling"), ("model", "g_sample_bn", "G's BatchNorm "
          "when sampling"), ("model", "d_pack", "PacGAN packing"), ("optim", "lr_g", "lr G"), ("optim", "lr_d", "lr D"),
          ("optim", "beta1", "Adam beta1"), ("train", "steps", "steps"), ("train", "batch_size", "batch"),
          ("train", "real_label", "real label"), ("train", "fake_label", "fake label"), ("train", "ema", "EMA of G"),
          ("train", "ema_decay", "EMA decay"), ("train", "r1_gamma", "R1 gamma"),
          ("train", "diffaugment", "DiffAugment"), ("train", "amp", "precision"), ("data", "path", "data"))


def run_dir_of(ckpt_dir: Path) -> Path:
    """The run directory a checkpoint directory sits in (run/checkpoints/step-N -> run)."""
    return ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else ckpt_dir.parent


def recipe(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) of the settings that make the recipe, in RECIPE's order; absent ones left out."""
    return [(label, config[section][name]) for section, name, label in RECIPE
            if name in config.get(section, {})]


def progress_frames(run_dir: Path, max_frames: int = 6, width: int = 256) -> list[tuple[int, bytes]]:
    """(step, PNG) of up to `max_frames` sample grids spread over training, first and last included: the grids
    progress.gif is made of (G_ema's where the run kept one), scaled down to `width` px."""
    from PIL import Image

    samples = run_dir / "samples"
    files = sorted(samples.glob("ema-*.png")) or sorted(samples.glob("raw-*.png"))
    if not files:
        return []
    if len(files) > max_frames:
        files = [files[round(i * (len(files) - 1) / (max_frames - 1))] for i in range(max_frames)]
    out = []
    for f in files:
        m = re.search(r"(\d+)\.png$", f.name)
        with Image.open(f) as im:
            im = im.convert("RGB")
            if im.width > width:
                im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.BOX)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        out.append((int(m.group(1)) if m else 0, buf.getvalue()))
    return out
