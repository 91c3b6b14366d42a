"""Stand-ins for tests and benchmarks, each built once per folder: random FID-Inception weights, a tiny
checkpoint in the trainer's format, and SynthFlowers shards made with the real `flowergan data synth`.

The real Inception weights cannot be downloaded on development machines; a randomly initialised extractor
with a fixed seed exercises every line of the pipeline, and torch-fidelity's own code fed the same weights
file is the reference the numbers are checked against.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from flowergan_eval.features import random_inception_weights


def inception_weights(folder: Path, seed: int = 0) -> Path:
    """`folder/inception-random-<seed>.pth`, created on first use."""
    path = Path(folder) / f"inception-random-{seed}.pth"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        random_inception_weights(tmp, seed=seed)
        tmp.replace(path)
    return path


def synth_shards(folder: Path, n: int, seed: int = 0, size: int = 64) -> Path:
    """SynthFlowers shards, written by the code behind `flowergan data synth`, created on first use."""
    from rich.console import Console

    from flowergan.data.ingest.synth import write_synthflowers

    out = Path(folder) / f"synth-{n}-{seed}-{size}"
    if not (out / "manifest.json").is_file():
        write_synthflowers(out, n=n, size=size, seed=seed, progress=False, console=Console(file=io.StringIO()))
    return out


def checkpoint(run_dir: Path, *, nz: int = 16, ngf: int = 8, ndf: int = 8, resolution: int = 64, step: int = 100,
               seed: int = 0, weight_std: float = 0.0) -> Path:
    """A run directory with one checkpoint of untrained G, D and G_ema, written by the trainer's own code.

    weight_std > 0 redraws G's and G_ema's conv weights with that std, so that an untrained G makes varied,
    saturated pictures instead of DCGAN-init grey (useful when a metric must see differences).
    """
    from flowergan.artifacts.checkpoint import list_checkpoints, save_checkpoint
    from flowergan.config import Config
    from flowergan.models import build_models

    root = Path(run_dir) / "checkpoints"
    if list_checkpoints(root):
        return Path(run_dir)
    cfg = Config()
    cfg.model.nz, cfg.model.ngf, cfg.model.ndf, cfg.model.resolution = nz, ngf, ndf, resolution
    torch.manual_seed(seed)
    G, D = build_models(cfg.model)
    G_ema, _ = build_models(cfg.model)
    if weight_std > 0:
        with torch.no_grad():
            for net in (G, G_ema):
                for m in net.modules():
                    if isinstance(m, torch.nn.ConvTranspose2d):
                        m.weight.normal_(0.0, weight_std)
    save_checkpoint(root, step=step, models={"G": G, "D": D, "G_ema": G_ema}, optim={},
                    state={"config": cfg.to_dict(), "images_seen": step * cfg.train.batch_size})
    return Path(run_dir)
