"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

D sees real and fake images through the same random, differentiable transforms, so it cannot memorise a
small data set and G still gets gradients through the augmentation. Every transform draws its parameters
per image in one tensor op (no Python loop over the batch) and keeps the input's dtype and device, so it
runs inside autocast on bf16 fakes without upcasting them.

Policies (comma-separated, applied in the order given):
  color        brightness +U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)
  translation  integer shift of up to 1/8 of the side in x and y, zero padding
  cutout       one zeroed square of half the side at a random centre (clipped at the border)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowergan.config import ConfigError

TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def _uniform(x: torch.Tensor, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    """One U(lo, hi) draw per image, shaped [B, 1, 1, 1] to broadcast over C, H, W."""
    u = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)
    return u * (hi - lo) + lo


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, saturation and contrast, per image."""
    x = x + _uniform(x, -0.5, 0.5, generator)
    gray = x.mean(dim=1, keepdim=True)  # saturation pulls each pixel towards its own grey level
    x = (x - gray) * _uniform(x, 0.0, 2.0, generator) + gray
    level = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast pulls every pixel towards the image mean
    return (x - level) * _uniform(x, 0.5, 1.5, generator) + level


def _shift_index(n: int, max_shift: int, batch: int, device: torch.device,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Source coordinate per output coordinate [B, n] for a random integer shift, and whether it is inside."""
    shift = torch.randint(-max_shift, max_shift + 1, (batch, 1), device=device, generator=generator)
    src = torch.arange(n, device=device)[None, :] - shift
    inside = (src >= 0) & (src < n)
    return src.clamp_(0, n - 1), inside


def translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ratio x side pixels in x and y; uncovered pixels become 0."""
    B, C, H, W = x.shape
    sy, sx = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ys, in_y = _shift_index(H, sy, B, x.device, generator)
    xs, in_x = _shift_index(W, sx, B, x.device, generator)
    # One gather over the flattened plane reads every output pixel from its source; its backward is a
    # scatter-add, so gradients flow back to the pixels that were kept.
    index = (ys[:, :, None] * W + xs[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
    out = x.reshape(B, C, H * W).gather(2, index).view(B, C, H, W)
    keep = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    return out * keep.to(x.dtype)


def cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one square of ratio x side per image, centred anywhere in the image."""
    B, _, H, W = x.shape
    h, w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = torch.randint(0, H, (B, 1), device=x.device, generator=generator)
    cx = torch.randint(0, W, (B, 1), device=x.device, generator=generator)
    rows = torch.arange(H, device=x.device)[None, :] - (cy - h // 2)  # position inside the square
    cols = torch.arange(W, device=x.device)[None, :] - (cx - w // 2)
    in_rows = (rows >= 0) & (rows < h)
    in_cols = (cols >= 0) & (cols < w)
    hole = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return x * (~hole).to(x.dtype)


POLICIES: dict[str, Callable[..., torch.Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> list[str]:
    """'color, translation' -> ['color', 'translation']; an unknown name raises ConfigError."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    for name in names:
        if name not in POLICIES:
            raise ConfigError(f"train.diffaugment: {name!r} is not allowed; "
                              f"use a comma-separated subset of: {', '.join(POLICIES)}")
    return names


def _apply(x: torch.Tensor, names: list[str], generator: torch.Generator | None) -> torch.Tensor:
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    for name in names:
        x = POLICIES[name](x, generator=generator)
    # gather/reshape return NCHW-contiguous tensors; keep D's input in the memory format the loop chose.
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated DiffAugment policy to a batch [B, C, H, W]; differentiable w.r.t. x."""
    return _apply(x, parse_policy(policy), generator)


def make_augment(policy: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augment callable for `gan_step(..., augment=...)`, or None when the policy is empty."""
    names = parse_policy(policy)
    if not names:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        return _apply(x, names, None)

    augment.policy = ",".join(names)  # type: ignore[attr-defined]
    return augment
