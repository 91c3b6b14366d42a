"""Fixed-noise sample grids during training (rank 0), and the progress GIF and loss plot at the end."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from flowergan import visuals
from flowergan.config import ModelConfig, class_names
from flowergan.generation import for_sampling
from flowergan.train.observe.logs import NullLogger


class SampleWriter:
    """The same z through G_ema and the raw G every `log.sample_every` steps: `samples/{ema,raw}-NNNNNNNN.png`
    and TensorBoard's Samples/*. Disabled (every rank but 0) it writes nothing. A conditional G draws one row per
    class (`y`), each row the same z's, with the class names down the left edge."""

    def __init__(self, run_dir: Path, log: NullLogger, z: torch.Tensor, bn_mode: str, enabled: bool,
                 y: torch.Tensor | None = None, names: list[str] | None = None):
        self.run_dir, self.log, self.z, self.bn_mode, self.enabled = run_dir, log, z, bn_mode, enabled
        self.y, self.names = y, names or []

    @classmethod
    def fixed(cls, run_dir: Path, log: NullLogger, mc: ModelConfig, n: int, seed: int, device: torch.device,
              enabled: bool) -> SampleWriter:
        """The writer of a run: `n` fixed z's from `seed`; a conditional model's n rounded up to whole rows of one
        class each (ceil(n / classes) z's, repeated for every class)."""
        g = torch.Generator().manual_seed(seed)
        if mc.conditional == "none":
            return cls(run_dir, log, torch.randn(n, mc.nz, generator=g).to(device), mc.g_sample_bn, enabled)
        k = mc.num_classes
        cols = math.ceil(n / k)
        z = torch.randn(cols, mc.nz, generator=g).repeat(k, 1)
        y = torch.arange(k).repeat_interleave(cols)
        return cls(run_dir, log, z.to(device), mc.g_sample_bn, enabled, y.to(device), class_names(mc))

    @torch.no_grad()
    def write(self, step: int, G: nn.Module, G_ema: nn.Module | None) -> None:
        if not self.enabled:
            return
        for tag, net in (("ema", G_ema), ("raw", G)):
            if net is None:
                continue
            was_training = net.training
            net.eval()
            sampler = for_sampling(net, self.bn_mode)  # model.g_sample_bn
            images = sampler(self.z) if self.y is None else sampler(self.z, self.y)
            net.train(was_training)
            if self.y is None:
                grid = visuals.to_grid(images)
            else:
                grid = visuals.class_rows(images, self.names, len(self.z) // len(self.names))
            visuals.save_png(grid, self.run_dir / "samples" / f"{tag}-{step:08d}.png")
            self.log.image(f"Samples/{tag}", step, grid)

    def finish(self) -> None:
        """progress.gif from the grids (EMA's if any) and losses.png from metrics.jsonl."""
        if not self.enabled:
            return
        samples = self.run_dir / "samples"
        frames = sorted(samples.glob("ema-*.png")) or sorted(samples.glob("raw-*.png"))
        visuals.save_gif(frames, self.run_dir / "progress.gif")
        visuals.plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "losses.png")
