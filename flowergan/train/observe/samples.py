"""Fixed-noise sample grids during training (rank 0), and the progress GIF and loss plot at the end."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowergan import visuals
from flowergan.generation import for_sampling
from flowergan.train.observe.logs import NullLogger


class SampleWriter:
    """The same z through G_ema and the raw G every `log.sample_every` steps: `samples/{ema,raw}-NNNNNNNN.png`
    and TensorBoard's Samples/*. Disabled (every rank but 0) it writes nothing."""

    def __init__(self, run_dir: Path, log: NullLogger, z: torch.Tensor, bn_mode: str, enabled: bool):
        self.run_dir, self.log, self.z, self.bn_mode, self.enabled = run_dir, log, z, bn_mode, enabled

    @torch.no_grad()
    def write(self, step: int, G: nn.Module, G_ema: nn.Module | None) -> None:
        if not self.enabled:
            return
        for tag, net in (("ema", G_ema), ("raw", G)):
            if net is None:
                continue
            was_training = net.training
            net.eval()
            grid = visuals.to_grid(for_sampling(net, self.bn_mode)(self.z))  # model.g_sample_bn
            net.train(was_training)
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
