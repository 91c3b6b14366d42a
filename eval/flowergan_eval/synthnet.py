"""SynthNet: a small CNN trained on a labelled shard set (the 48 SynthFlowers modes), whose features define synth-FD.

MNIST GAN papers measure fidelity as a Fréchet distance in the features of a LeNet trained on the domain, where
ImageNet's Inception does not fit and its weights may not be at hand. SynthNet plays that part for SynthFlowers:
three strided convolutions on a 32x32 area-downscaled copy, then a 128-d linear layer whose (pre-activation) outputs
are the features, then the class logits. It is cheap on purpose (about 1 M multiply-adds per image) so that it
trains within `flowergan-eval oracle train` on a 2-core CPU. It reads the petal hue almost perfectly and the petal
count only partly (the Fourier oracle in oracle.py is what counts modes); its features still see colour, size,
layout, background and texture, which is what a distance between two image sets needs.
The weights sit next to the mode oracle (oracle.default_dir), as safetensors + JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from flowergan.errors import UserError
from flowergan_eval.real import RealSet, load_real

SYNTHNET_VERSION = 1
INPUT = 32  # side of the downscaled copy the CNN reads
FEATURES = 128  # width of the feature layer (the D of synth-FD)
WEIGHTS, INFO = "synthnet.safetensors", "synthnet.json"
MIN_IMAGES = 16


class SynthNet(nn.Module):
    """uint8 images [B, 3, H, W] -> (features [B, 128], logits [B, K])."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.conv = nn.Sequential(
            nn.Conv2d(3, w, 5, 2, 2), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten())
        self.fc = nn.Linear(4 * w * (INPUT // 8) ** 2, FEATURES)
        self.head = nn.Linear(FEATURES, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float [-1, 1] at INPUT x INPUT (area average: every pixel counts once)."""
        x = images.float().div(127.5).sub(1.0)
        if x.shape[-1] != INPUT or x.shape[-2] != INPUT:
            x = F.adaptive_avg_pool2d(x, INPUT) if x.shape[-1] > INPUT else F.interpolate(
                x, size=(INPUT, INPUT), mode="bilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.fc(self.conv(x))
        return f, self.head(F.relu(f))


def train(real: RealSet, *, epochs: int = 5, holdout: float = 0.1, seed: int = 0, progress=None
          ) -> tuple[SynthNet, dict[str, Any]]:
    """Fit SynthNet on the labelled shards; the last `holdout` share (manifest order) measures its accuracy."""
    if real.num_classes < 2:
        raise UserError(f"{real.path}: the manifest lists {real.num_classes} class; SynthNet learns its features "
                        "from the classes of a SynthFlowers set (`flowergan data synth --out DIR --n 4096`)")
    if epochs < 1:
        raise UserError(f"--cnn-epochs {epochs}: must be >= 1")
    images, labels = load_real(real)
    if len(images) < MIN_IMAGES:
        raise UserError(f"{real.path}: {len(images)} images are too few to train SynthNet (need >= {MIN_IMAGES})")
    x = SynthNet.prepare(images)
    n_test = max(1, int(round(len(x) * holdout)))
    x_train, y_train, x_test, y_test = x[:-n_test], labels[:-n_test], x[-n_test:], labels[-n_test:]
    # A private RNG stream: the training loop's global RNG (and so its exact resume) is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SynthNet(real.num_classes)
        g = torch.Generator().manual_seed(seed)
        batches = (len(x_train) + 63) // 64
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * batches)
        task = progress.add_task("SynthNet training", total=epochs) if progress is not None else None
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x_train), generator=g).split(64):
                xb = x_train[idx]
                flip = torch.rand(len(xb), generator=g) < 0.5  # SynthFlowers are mirror-symmetric in law
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                loss = F.cross_entropy(model(xb)[1], y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if task is not None:
                progress.advance(task)
    model.eval()
    with torch.no_grad():
        pred = model(x_test)[1].argmax(dim=1)
    info = {"version": SYNTHNET_VERSION, "num_classes": real.num_classes, "features": FEATURES, "input": INPUT,
            "accuracy": float((pred == y_test).float().mean()), "n_train": len(x_train), "n_test": n_test,
            "epochs": epochs, "seed": seed, "data": real.path, "name": real.name,
            "pixel_fingerprint": real.pixel_fingerprint, "shard_fingerprint": real.shard_fingerprint,
            "resolution": real.resolution}
    return model, info


def tensors(model: SynthNet) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def load(path: Path) -> tuple[SynthNet, dict[str, Any]]:
    """The SynthNet saved in an oracle directory."""
    try:
        info = json.loads((path / INFO).read_text())
        model = SynthNet(int(info["num_classes"]))
        model.load_state_dict(load_file(str(path / WEIGHTS)))
    except FileNotFoundError:
        raise UserError(f"{path}: no SynthNet there ({INFO} and {WEIGHTS}); train one with "
                        "`flowergan-eval oracle train --data SYNTH_SHARDS`") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"{path}: unreadable SynthNet ({e})") from None
    info["sha256"] = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    return model.eval(), info


def ensure(real: RealSet, path: Path | None = None, progress: Any = None) -> tuple[SynthNet, dict[str, Any], Path]:
    """The SynthNet of `real` from its oracle directory, trained and saved there first when it is missing."""
    from flowergan_eval import oracle as O

    path = path or O.default_dir(real)
    if not (path / INFO).is_file():
        print(f"training SynthNet on {real.path} (saved to {path}; once per data set)", file=sys.stderr)
        model, info = train(real, progress=progress)
        O.save_files(path, {WEIGHTS: tensors(model)}, {INFO: info})
    model, info = load(path)
    return model, info, path


class SynthExtractor:
    """SynthNet as a feature extractor: uint8 images -> (features [B, 128], logits [B, K]) on `device`."""

    def __init__(self, model: SynthNet, info: dict[str, Any], *, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = model.to(self.device).eval().requires_grad_(False)
        self.info = info
        self.weights_sha256 = str(info.get("sha256", ""))
        self.resize = f"area {info.get('resolution', '?')}->{INPUT}"

    @property
    def name(self) -> str:
        """What produced the features, for every reported number."""
        return f"synthnet-v{SYNTHNET_VERSION}[{self.weights_sha256[:12]}, trained on {self.info.get('name')}] " \
               f"fc-{FEATURES}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        f, logits = self.net(SynthNet.prepare(images.to(self.device)))
        return f.float(), logits.float()
