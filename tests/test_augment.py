"""DiffAugment: shapes, exact geometry of each transform, gradients, seeding, dtype and memory format."""

from __future__ import annotations

import pytest
import torch

from flowergan.config import ConfigError
from flowergan.errors import UserError
from flowergan.train.gan.augment import color, cutout, diff_augment, make_augment, parse_policy, translation

POLICIES = ["color", "translation", "cutout", "color,translation,cutout", "translation,cutout"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _images(b: int = 8, side: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, side, side, generator=g) * 2 - 1


@pytest.mark.parametrize("side", [16, 64])
@pytest.mark.parametrize("policy", POLICIES)
def test_shape_dtype_and_differentiable(policy: str, side: int) -> None:
    x = _images(side=side).requires_grad_(True)
    y = diff_augment(x, policy)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_result_and_per_image_randomness(policy: str) -> None:
    x = _images(b=16)
    torch.manual_seed(3)
    a = diff_augment(x, policy)
    torch.manual_seed(3)
    b = diff_augment(x, policy)
    torch.manual_seed(4)
    c = diff_augment(x, policy)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # An explicit generator gives the same stream without touching the global RNG.
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(diff_augment(x, policy, g1), diff_augment(x, policy, g2))
    # Parameters are drawn per image: the same image repeated in a batch gets different augmentations.
    same = x[:1].expand(16, -1, -1, -1).contiguous()
    out = diff_augment(same, policy)
    assert any(not torch.equal(out[0], out[i]) for i in range(1, 16))


def test_translation_is_an_integer_shift_with_zero_padding() -> None:
    side = 16
    x = torch.arange(1, 8 * 3 * side * side + 1, dtype=torch.float32).view(8, 3, side, side)
    torch.manual_seed(0)
    y = translation(x)
    max_shift = side // 8
    seen_shifts = set()
    for i in range(8):
        match = None
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                ref = torch.zeros_like(x[i])
                ys, yd = slice(max(0, -dy), side - max(0, dy)), slice(max(0, dy), side - max(0, -dy))
                xs, xd = slice(max(0, -dx), side - max(0, dx)), slice(max(0, dx), side - max(0, -dx))
                ref[:, yd, xd] = x[i][:, ys, xs]
                if torch.equal(ref, y[i]):
                    match = (dy, dx)
        assert match is not None, f"image {i} is not a shift of at most {max_shift} px with zero padding"
        seen_shifts.add(match)
    assert len(seen_shifts) > 1


def test_translation_gradient_counts_kept_pixels() -> None:
    x = _images(side=16).requires_grad_(True)
    torch.manual_seed(1)
    y = translation(x)
    y.sum().backward()
    # Each source pixel lands at most once, so its gradient is 1 if it is still visible, else 0.
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert x.grad.sum() == (y != 0).sum()


def test_cutout_zeroes_one_square_of_half_the_side() -> None:
    side, b = 16, 64
    x = torch.ones(b, 3, side, side)
    torch.manual_seed(0)
    y = cutout(x)
    holes = y[:, 0] == 0
    assert torch.equal(holes[:, None].expand_as(y), y == 0)  # the same hole in every channel
    h = side // 2
    for i in range(b):
        rows, cols = holes[i].any(1).nonzero().view(-1), holes[i].any(0).nonzero().view(-1)
        # A solid rectangle (a square clipped at the border) of at most h x h and at least h/2 x h/2.
        assert holes[i].sum() == len(rows) * len(cols)
        assert h // 2 <= len(rows) <= h and h // 2 <= len(cols) <= h
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    assert holes.sum((1, 2)).max() == h * h  # some squares lie fully inside


def test_color_on_grey_images_is_a_brightness_shift() -> None:
    # A flat grey image has no saturation or contrast to change, so only brightness U(-0.5, 0.5) remains.
    level = torch.linspace(-0.5, 0.5, 32).view(32, 1, 1, 1)
    x = level.expand(32, 3, 8, 8).contiguous()
    torch.manual_seed(0)
    shift = color(x) - x
    per_image = shift.view(32, -1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.abs().max() <= 0.5 + 1e-6 and per_image[:, 0].std() > 0.1


def test_color_changes_saturation_and_contrast() -> None:
    x = _images(b=32)
    torch.manual_seed(0)
    y = color(x)
    centred_x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    centred_y = y - y.mean(dim=(1, 2, 3), keepdim=True)
    ratio = centred_y.std(dim=(1, 2, 3)) / centred_x.std(dim=(1, 2, 3))
    assert ratio.min() < 0.8 and ratio.max() > 1.2  # spread scaled by saturation x contrast in (0, 3)


def test_bf16_and_channels_last_are_kept() -> None:
    x = _images().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = diff_augment(x, "color,translation,cutout")
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert make_augment("color,translation,cutout")(x).dtype == torch.bfloat16


def test_make_augment_and_policy_parsing() -> None:
    assert make_augment("") is None
    assert make_augment(" , ") is None
    aug = make_augment(" color , cutout")
    assert aug is not None and aug.policy == "color,cutout"
    x = _images()
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    assert torch.equal(a, diff_augment(x, "color,cutout"))
    assert parse_policy("translation,color") == ["translation", "color"]


@pytest.mark.parametrize("policy", ["flip", "color,rotate", "Color"])
def test_unknown_policy_is_one_line_naming_the_field(policy: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_augment(policy)
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert msg.startswith("train.diffaugment:") and "\n" not in msg
