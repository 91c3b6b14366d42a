"""The only code that runs networks: FID Inception features, G's samples as uint8, D's penultimate features.

The extractor is torch-fidelity's `FeatureExtractorInceptionV3` (the TF-Inception 2015-12-05 port that FID
was defined with; torchvision's inception_v3 is a different network). Two numerically neutral rewrites make
it faster than torch-fidelity's own use of it: each conv's BatchNorm is folded into the conv weights, and the
weights are stored channels-last, which oneDNN and cuDNN run faster. Features agree to ~1e-6 relative.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowergan_eval import weights as W

if TYPE_CHECKING:
    from flowergan.models import Discriminator

INPUT_SIZE = 299
RESIZE_MODE = "tf1-bilinear"  # TensorFlow 1.x bilinear resize to 299x299 (align_corners=False), as in FID
POOL, LOGITS = "2048", "logits_unbiased"  # torch-fidelity's names: FID/KID/PRDC use pool3, IS the logits


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """G's output in [-1, 1] -> uint8 exactly as a saved PNG holds it (torchvision's save_image rounding)."""
    return (x.detach().float().clamp(-1, 1) * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], the range G and D work in."""
    return x.float().div(127.5).sub(1.0)


# ---------------------------------------------------------------- Inception
def _tf_inception_class() -> type:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def _build_tf_inception(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """torch-fidelity's module holding `state_dict`.

    torch-fidelity reads a weights *path* with a full (unpickling) torch.load. We load
    the user's file ourselves with weights_only=True and hand torch-fidelity an in-memory copy that holds
    nothing but those tensors, so no code from a weights file is ever run.
    """
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    try:
        return _tf_inception_class()("inception-v3-compat", [POOL, LOGITS], feature_extractor_weights_path=buf)
    except RuntimeError as e:  # load_state_dict: missing/unexpected keys or wrong shapes
        raise ValueError(f"not the TF-Inception architecture: {str(e).splitlines()[0]}") from None


class _ConvReLU(nn.Module):
    """torch-fidelity's BasicConv2d (conv, BN eps 1e-3, ReLU) with the eval-mode BN folded into the conv."""

    def __init__(self, block: Any):  # torch-fidelity's BasicConv2d: untyped attributes
        super().__init__()
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        self.conv = fuse_conv_bn_eval(block.conv.eval(), block.bn.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


def _fold_batchnorm(module: nn.Module) -> nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    for name, child in module.named_children():
        if isinstance(child, BasicConv2d):
            setattr(module, name, _ConvReLU(child))
        else:
            _fold_batchnorm(child)
    return module


class InceptionExtractor:
    """uint8 images [B, 3, H, W] (any H, W) -> pool3 features [B, 2048] and unbiased logits [B, 1008]."""

    def __init__(self, state_dict: dict[str, torch.Tensor], *, device: str | torch.device = "cpu",
                 weights_sha256: str = "", fast: bool = True):
        self.device = torch.device(device)
        # Building layers draws their (immediately replaced) initial weights from the global RNG; a private fork
        # keeps the training loop's random stream, and so its bit-identical resume, untouched.
        with torch.random.fork_rng(devices=[]):
            net = _build_tf_inception(state_dict)
            if fast:
                net = _fold_batchnorm(net).to(memory_format=torch.channels_last)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.weights_sha256 = weights_sha256
        self.official = weights_sha256 == W.OFFICIAL_SHA256

    @property
    def name(self) -> str:
        """What produced the features, for every reported number."""
        if self.official:
            return "tf-inception-2015-12-05 pool3-2048"
        return f"inception-v3-compat[custom weights {self.weights_sha256[:12]}] pool3-2048"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        with full_fp32(self.device):
            pool, logits = self.net(images.to(self.device, non_blocking=True))
        return pool.float(), logits.float()


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """IEEE fp32 for the convolutions *and* the logits matmul while the extractor runs on a GPU, restoring what
    was set: TF32 (a 10-bit mantissa) is cuDNN's default on Ampere and later, and FID is defined in fp32.

    torch >= 2.9 has `fp32_precision` per backend; once anything set it, reading the deprecated `allow_tf32`
    flags raises, so they are only the fallback for older torch."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv: Any = getattr(cudnn, "conv", None)  # torch >= 2.9 (typed as absent by older stubs)
    new_api = hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision")
    if new_api:
        before = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
    else:
        before = (cudnn.allow_tf32, matmul.allow_tf32)
        cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        if new_api:
            conv.fp32_precision, matmul.fp32_precision = before
        else:
            cudnn.allow_tf32, matmul.allow_tf32 = before


@lru_cache(maxsize=2)
def _load_cached(path: str, sha256: str, device: str) -> InceptionExtractor:
    return InceptionExtractor(W.load_state_dict(path), device=device, weights_sha256=sha256)


def load_inception(path: str | None = None, *, device: str | torch.device = "cpu",
                   download: bool = True) -> InceptionExtractor:
    """The FID extractor from the located weights (kept in memory for the next call with the same file)."""
    from flowergan.errors import UserError

    p = W.locate_weights(path, download=download)
    try:
        return _load_cached(str(p.resolve()), W.sha256_file(p), str(torch.device(device)))
    except ValueError as e:
        raise UserError(f"{p}: {e}") from None


def random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """A randomly initialised TF-Inception state dict saved to `path`: a stand-in for tests and benchmarks.

    He-normal convs, then BatchNorm statistics measured on a few varied random pictures, so activations
    stay O(1) and differ between images through all 94 layers (PyTorch's default init shrinks them to
    ~1e-8 and makes every image look alike, which would make every metric degenerate).
    """
    cls: Any = _tf_inception_class()

    class _Skeleton(cls):  # builds the layers and skips loading: there is nothing to load yet
        def load_state_dict(self, *args, **kwargs):  # noqa: D102
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    net = _Skeleton("skeleton", [POOL], feature_extractor_weights_path=empty)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel()))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.momentum = None  # cumulative average: after one batch the running stats are its stats
        # Calibrate BatchNorm with one train-mode forward over varied pictures (smooth colour fields, pixel
        # noise, hard-edged blocks) so images of every kind stay in range, not only one kind.
        smooth = F.interpolate(torch.rand(6, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic",
                               align_corners=False).clamp(0, 1)
        noise = torch.rand(4, 3, 64, 64, generator=g)
        blocks = F.interpolate((torch.rand(4, 3, 16, 16, generator=g) > 0.5).float(), size=(64, 64), mode="nearest")
        calibration = (torch.cat([smooth, noise, blocks]) * 255).round().to(torch.uint8)
        net.train()
        pool = net(calibration)[0]
        net.eval()
        # Logits that vary by ~3 between those pictures: a softmax neither flat (IS = 1) nor saturated.
        w = torch.randn(net.fc.weight.shape, generator=g)
        spread = (pool - pool.mean(dim=0)) @ w.T
        net.fc.weight.copy_(w * (3.0 / spread.std().clamp_min(1e-12)))
        net.fc.bias.copy_(0.1 * torch.randn(net.fc.bias.shape, generator=g))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, path)
    return path


# ---------------------------------------------------------------- feature loops
@dataclass
class Features:
    """An extractor's outputs for a set of images: features [N, D] ("pool") and, where the network classifies,
    logits [N, K]; float32 numpy."""

    pool: np.ndarray
    logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pool)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"pool": self.pool} if self.logits is None else {"pool": self.pool, "logits": self.logits}


def extract(extractor: Any, batches: Iterable[torch.Tensor], total: int, *,
            progress=None, description: str = "features") -> Features:
    """Run an extractor (uint8 batch -> (features, logits or None)) over batches; `progress` is a rich Progress."""
    pools, logits = [], []
    task = progress.add_task(description, total=total) if progress is not None else None
    for images in batches:
        p, lg = extractor(images)
        pools.append(p.cpu())
        if lg is not None:
            logits.append(lg.cpu())
        if task is not None:
            progress.advance(task, len(images))
    if not pools:
        raise ValueError("no images to extract features from")
    return Features(torch.cat(pools).numpy(), torch.cat(logits).numpy() if len(logits) == len(pools) else None)


# ---------------------------------------------------------------- G and D
def sample_labels(G: nn.Module, n: int) -> torch.Tensor | None:
    """The class of each of n generated images of a conditional G (sample i is class i mod K, so every class is
    scored alike); None for an unconditional G."""
    from flowergan.generation import class_labels

    return class_labels(G, n)


def latents(n: int, nz: int, seed: int) -> torch.Tensor:
    """The z for sample i is the same on every device and batch size (drawn on the CPU from one seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, nz, generator=g)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, *, batch: int = 64, device: str | torch.device = "cpu",
             y: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """G(z) in eval mode as uint8 batches on `device` (fp32: no autocast, so samples match a saved PNG); a
    conditional G gets G(z, y), y the class of each row (default `sample_labels`: row i is class i mod K)."""
    device = torch.device(device)
    if y is None:
        y = sample_labels(G, len(z))
    was_training = G.training
    G.eval()
    try:
        for lo in range(0, len(z), batch):
            with torch.autocast(device.type, enabled=False):
                zb = z[lo:lo + batch].to(device)
                yield to_uint8(G(zb) if y is None else G(zb, y[lo:lo + batch].to(device)))
    finally:
        G.train(was_training)


@torch.no_grad()
def d_features(D: Discriminator, images: torch.Tensor, *, batch: int = 256, device: str | torch.device = "cpu",
               labels: torch.Tensor | None = None) -> np.ndarray:
    """D's penultimate activations (`D.phi`) of uint8 images, flattened to [N, C*4*4]; a concat D also reads each
    image's class (`labels`)."""
    was_training = D.training
    D.eval()

    def y(lo: int) -> torch.Tensor | None:
        return None if labels is None or D.conditional != "concat" else labels[lo:lo + batch].to(device)

    try:
        out = [D.phi(uint8_to_unit(images[lo:lo + batch].to(device)), y(lo)).flatten(1).float().cpu()
               for lo in range(0, len(images), batch)]
    finally:
        D.train(was_training)
    return torch.cat(out).numpy()
