"""uint8 NHWC batch -> float32 NCHW in [-1, 1] with seeded flips and colour jitter (same result on any worker)."""

from __future__ import annotations

import hashlib

import torch


def batch_seed(seed: int, rank: int, index: int) -> int:
    """The augmentation seed of batch `index` of `rank`: independent of which process builds the batch."""
    digest = hashlib.blake2b(f"flowergan-aug:{seed}:{rank}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the in-memory permutation of `epoch` (the same on every rank)."""
    return batch_seed(seed, -1, epoch)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device` without a host sync: a CPU tensor goes to a GPU through pinned memory, non-blocking.

    A blocking host-to-GPU copy waits for the GPU to drain (it is one of the syncs that
    `torch.cuda.set_sync_debug_mode` reports). PyTorch's pinned-memory cache keeps the staging block until the copy
    has run, so the source may be freed at once.
    """
    if t.device == device or device.type != "cuda":
        return t.to(device)
    if t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def to_float(x: torch.Tensor, *, seed: int, hflip: float, jitter: float) -> torch.Tensor:
    """x: uint8 [B, H, W, 3] on any device -> float32 [B, 3, H, W] in [-1, 1], augmented with generator `seed`."""
    b, h, w, c = x.shape
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(b, generator=g) < hflip  # drawn on the CPU: no device sync to decide anything
    factors = (torch.rand(b, 3, generator=g) * 2 - 1) * jitter + 1  # brightness, contrast, saturation
    out = torch.empty((b, c, h, w), dtype=torch.float32, device=x.device)
    out.copy_(x.permute(0, 3, 1, 2))  # one pass: NHWC uint8 -> NCHW float
    if hflip > 0 and bool(flip.any()):
        idx = to_device(flip.nonzero()[:, 0], x.device)
        out[idx] = out[idx].flip(3)
    if jitter > 0:
        f = to_device(factors, x.device)
        out.mul_(f[:, 0, None, None, None])
        grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
        mean = grey.mean(dim=(2, 3), keepdim=True)
        out = (out - mean).mul_(f[:, 1, None, None, None]).add_(mean)
        grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
        out = (out - grey).mul_(f[:, 2, None, None, None]).add_(grey).clamp_(0.0, 255.0)
    return out.mul_(2.0 / 255.0).sub_(1.0)
