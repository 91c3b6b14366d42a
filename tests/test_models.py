"""G and D: shapes for every option at 64² and 128², the DCGAN layer layout, and the DCGAN init."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from flowergan.config import ModelConfig
from flowergan.models import Blur, Discriminator, Generator, MinibatchStd, _n_blocks, _up, build_models, init_weights

OPTIONS = [
    {},
    {"kernel": 5},
    {"d_dropout": 0.1},
    {"d_input_dropout": 0.5},
    {"d_head": "dense"},
    {"spectral_norm": True},
    {"d_mbstd": 4},
    {"g_upsample": "resize-conv"},
    {"g_upsample": "resize-conv", "kernel": 5},
    {"g_upsample": "resize-conv-bilinear"},
    {"g_upsample": "resize-conv-last"},
    {"g_upsample": "deconv-blur"},
    {"g_upsample": "deconv-blur-rc-last"},
    {"kernel": 5, "d_dropout": 0.1, "d_input_dropout": 0.5, "d_head": "dense", "spectral_norm": True},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _cfg(resolution: int, **options) -> ModelConfig:
    # Small widths keep 128² fast on two cores; the layout does not depend on them.
    return dataclasses.replace(ModelConfig(), resolution=resolution, nz=16, ngf=8, ndf=8, **options)


@pytest.mark.parametrize("resolution", [64, 128])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_shapes(resolution: int, options: dict) -> None:
    cfg = _cfg(resolution, **options)
    G, D = build_models(cfg)
    torch.manual_seed(0)
    z = torch.randn(3, cfg.nz)
    x = G(z)
    assert x.shape == (3, 3, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output
    assert G(z[:, :, None, None]).shape == x.shape  # z as [B, nz] or [B, nz, 1, 1]
    n = _n_blocks(resolution)
    assert D.features(x).shape == (3, cfg.ndf * 2 ** (n - 1), 4, 4)
    logits = D(x)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    # Logits, not probabilities: D has no Sigmoid anywhere.
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_any_power_of_two_from_8(resolution: int) -> None:
    G, D = Generator(8, 4, resolution), Discriminator(4, resolution)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, resolution, resolution) and D(x).shape == (2,)


@pytest.mark.parametrize("resolution", [4, 48, 100])
def test_bad_resolution(resolution: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(8, 4, resolution)


def test_default_64_is_the_pytorch_dcgan_tutorial_architecture() -> None:
    G, D = build_models(ModelConfig())
    # (kind, in, out, kernel, stride, padding) of the tutorial's netG / netD (nz 100, ngf = ndf = 64).
    g_convs = [(100, 512, 4, 1, 0), (512, 256, 4, 2, 1), (256, 128, 4, 2, 1), (128, 64, 4, 2, 1), (64, 3, 4, 2, 1)]
    d_convs = [(3, 64, 4, 2, 1), (64, 128, 4, 2, 1), (128, 256, 4, 2, 1), (256, 512, 4, 2, 1), (512, 1, 4, 1, 0)]

    def convs(model: nn.Module, kind: type) -> list[tuple]:
        return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
                for m in model.modules() if isinstance(m, kind)]

    assert convs(G, nn.ConvTranspose2d) == g_convs
    assert convs(D, nn.Conv2d) == d_convs
    assert sum(p.numel() for p in G.parameters()) == 3_576_704
    assert sum(p.numel() for p in D.parameters()) == 2_765_568
    # BN after every G layer but the last; Tanh at the end. BN on every D block but the first.
    g_layers = list(G.main)
    assert isinstance(g_layers[-1], nn.Tanh) and isinstance(g_layers[-2], nn.ConvTranspose2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == 4
    d_layers = list(D.features)
    assert isinstance(d_layers[0], nn.Conv2d) and isinstance(d_layers[1], nn.LeakyReLU)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == 3
    assert all(m.negative_slope == 0.2 for m in D.modules() if isinstance(m, nn.LeakyReLU))
    assert not any(m.bias is not None for m in D.modules() if isinstance(m, nn.Conv2d))


def test_128_has_one_more_block() -> None:
    G, D = build_models(dataclasses.replace(ModelConfig(), resolution=128))
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules()) == 6
    assert sum(isinstance(m, nn.Conv2d) for m in D.modules()) == 6
    assert G.main[0].out_channels == 1024 and D.features[-3].out_channels == 1024


def test_dropout_options() -> None:
    D = build_models(_cfg(64, d_dropout=0.1, d_input_dropout=0.5))[1]
    drops = [m for m in D.features if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5] + [0.1] * 4
    assert D.features[0] is drops[0]  # the input dropout comes before the first conv
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    D.train()
    torch.manual_seed(0)
    a = D(x)
    assert not torch.equal(a, D(x))  # dropout is live in training
    D.eval()
    assert torch.equal(D(x), D(x))
    plain = build_models(_cfg(64))[1]
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_dense_head() -> None:
    D = build_models(_cfg(64, d_head="dense"))[1]
    linear = [m for m in D.head if isinstance(m, nn.Linear)]
    assert len(linear) == 1 and linear[0].in_features == 8 * 8 * 16 and linear[0].out_features == 1


def test_spectral_norm_bounds_every_d_layer() -> None:
    torch.manual_seed(0)  # 30 power iterations reach |sigma - 1| < 0.02 for seeds 0..14
    D = build_models(_cfg(64, spectral_norm=True, d_head="dense"))[1]
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    for _ in range(30):  # each training forward runs one power iteration
        D(x)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05
    G, plain = build_models(_cfg(64))
    assert not any(parametrize.is_parametrized(m) for m in [*G.modules(), *plain.modules()])


@pytest.mark.parametrize("resolution", [64, 128])
def test_init_statistics(resolution: int) -> None:
    torch.manual_seed(0)
    G, D = build_models(dataclasses.replace(ModelConfig(), resolution=resolution))
    for model in (G, D):
        convs = torch.cat([m.weight.detach().flatten() for m in model.modules()
                           if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
        assert abs(convs.mean().item()) < 1e-3
        assert abs(convs.std().item() - 0.02) < 5e-4
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        gamma = torch.cat([m.weight.detach() for m in bns])
        beta = torch.cat([m.bias.detach() for m in bns])
        assert abs(gamma.mean().item() - 1.0) < 0.01 and abs(gamma.std().item() - 0.02) < 0.005
        assert torch.all(beta == 0)


def test_init_weights_resets_a_linear_and_leaves_others() -> None:
    lin, act = nn.Linear(256, 256), nn.ReLU()
    init_weights(lin)
    init_weights(act)
    assert abs(lin.weight.std().item() - 0.02) < 2e-3 and torch.all(lin.bias == 0)


def _load_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reference_is_the_same_network() -> None:
    # benchmarks/train_step.py compares speed against the tutorial's nn.Sequential nets: that is only fair if
    # they are flowergan's default nets layer for layer (D's Sigmoid aside, which has no parameters).
    bench = _load_benchmark()
    G, D = build_models(ModelConfig())
    for ours, theirs in ((G, bench.tutorial_G()), (D, bench.tutorial_D())):
        ours_shapes = [tuple(t.shape) for t in ours.state_dict().values()]
        theirs_shapes = [tuple(t.shape) for t in theirs.state_dict().values()]
        assert ours_shapes == theirs_shapes
    assert isinstance(list(bench.tutorial_D())[-1], nn.Sigmoid)


@pytest.mark.parametrize("m", [2, 4])
def test_pacgan_packing_judges_m_images_per_logit(m: int) -> None:
    torch.manual_seed(0)
    D = Discriminator(4, 16, pack=m)
    first = next(x for x in D.features if isinstance(x, nn.Conv2d))
    assert first.in_channels == 3 * m  # m RGB images side by side on the channel axis
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    assert D(x).shape == (8 // m,)
    # Pack j holds images j*m .. j*m+m-1: changing image 1 changes only the first pack's logit.
    D.eval()
    y = x.clone()
    y[1] = -y[1]
    changed = (D(x) != D(y)).tolist()
    assert changed[0] and not any(changed[1:])
    assert torch.allclose(D(x.contiguous(memory_format=torch.channels_last)), D(x), atol=1e-6)
    with pytest.raises(ValueError, match="d_pack"):
        D(x[:m + 1])
    assert build_models(_cfg(64, d_pack=m))[1].features[0].m == m
    assert build_models(_cfg(64))[1].state_dict().keys() == Discriminator(8, 64).state_dict().keys()


def test_minibatch_std_channel_is_the_spread_of_each_group() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 4)
    out = MinibatchStd(4)(x)
    assert out.shape == (8, 6, 4, 4) and torch.equal(out[:, :5], x)
    # Group j holds samples j and j + 2 (of 8 in groups of 4: j, j+2, j+4, j+6), as in ProGAN's reshape.
    for j in range(2):
        want = x[j::2].std(dim=0, unbiased=False).mean()
        assert torch.allclose(out[j::2, 5], want.expand(4, 4, 4), atol=1e-5)
    # A batch of identical samples (a collapsed G) reads about zero; a spread-out batch does not.
    same = x[:1].expand(8, 5, 4, 4).contiguous()
    assert MinibatchStd(4)(same)[:, 5].max() < 1e-3 < out[:, 5].min()
    with pytest.raises(ValueError, match="d_mbstd"):
        MinibatchStd(4)(x[:6])


def test_minibatch_std_lets_d_see_across_the_batch() -> None:
    torch.manual_seed(0)
    D = Discriminator(4, 16, mbstd=2).eval()
    head_conv = next(m for m in D.head if isinstance(m, nn.Conv2d))
    assert head_conv.in_channels == 4 * 2 + 1  # the std-dev channel on top of D's last features
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[1] = -y[1]
    changed = (D(x) != D(y)).tolist()
    assert changed == [False, True, False, True]  # groups {0, 2} and {1, 3}: image 1's group partner moves too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert D(x).shape == (4,)
    assert build_models(_cfg(64, d_mbstd=4))[1].head[0].group == 4
    assert build_models(_cfg(64))[1].state_dict().keys() == Discriminator(8, 64).state_dict().keys()


@pytest.mark.parametrize("kernel", [4, 5])
def test_deconv_draws_a_lattice_from_a_flat_input_and_resize_conv_does_not(kernel: int) -> None:
    """Odena et al. (2016): a stride-2 transposed conv computes even and odd output pixels with different parts of
    its kernel, so a flat input comes out as a period-2 lattice unless the weights happen to balance; nearest 2x
    then a stride-1 conv computes every pixel with the whole kernel, so a flat input stays flat."""
    torch.manual_seed(0)
    flat = torch.ones(1, 2, 8, 8)
    for mode in ("deconv", "resize-conv", "deconv-blur"):
        layer = _up(2, 1, kernel, mode)
        with torch.no_grad():
            out = layer(flat)
        assert out.shape == (1, 1, 16, 16)
        inner = out[0, 0, 4:-4, 4:-4]  # away from the border, where zero padding does not reach
        lattice = inner[::2, ::2] - inner[1::2, ::2]  # even rows minus odd rows
        if mode == "deconv":
            assert lattice.abs().min() > 1e-3 and torch.allclose(lattice, lattice[0, 0].expand_as(lattice))
        else:
            assert torch.allclose(inner, inner[0, 0].expand_as(inner), atol=1e-6)


def test_g_upsample_builds_the_layers_it_names() -> None:
    G, _ = build_models(_cfg(64, g_upsample="resize-conv"))
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in list(G.modules())[4:])  # only the 1x1 -> 4x4 seed
    assert sum(isinstance(m, nn.Upsample) for m in G.modules()) == 4  # 4 -> 8 -> 16 -> 32 -> 64
    G0, _ = build_models(_cfg(64))
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in G0.modules()) == 5  # Radford's default unchanged
    with pytest.raises(ValueError, match="upsample"):
        _up(4, 4, 4, "bilinear")
    mixed, _ = build_models(_cfg(64, g_upsample="resize-conv-last"))
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in mixed.modules()) == 4  # the seed and three doublings
    assert isinstance(mixed.main[-2][0], nn.Upsample)  # only the RGB layer resizes
    blurred, _ = build_models(_cfg(64, g_upsample="deconv-blur"))
    assert sum(isinstance(m, Blur) for m in blurred.modules()) == 4  # after each doubling, the RGB layer's too
    assert not any("kernel" in k for k in blurred.state_dict())  # a constant: checkpoints carry no extra tensor
    smooth, _ = build_models(_cfg(64, g_upsample="resize-conv-bilinear"))
    assert [m.mode for m in smooth.modules() if isinstance(m, nn.Upsample)] == ["bilinear"] * 4
    assert [m.mode for m in G.modules() if isinstance(m, nn.Upsample)] == ["nearest"] * 4
    sharp_rgb, _ = build_models(_cfg(64, g_upsample="deconv-blur-rc-last"))
    assert sum(isinstance(m, Blur) for m in sharp_rgb.modules()) == 3  # the three inner doublings only
    assert isinstance(sharp_rgb.main[-2][0], nn.Upsample)  # the RGB layer resizes, unblurred


def test_bilinear_resize_spreads_a_pixel_where_nearest_copies_it() -> None:
    """The point of resize-conv-bilinear: one bright pixel comes out as a ramp, not as a flat 2x2 block."""
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    block = _up(1, 1, 4, "resize-conv")[0](x)[0, 0]
    ramp = _up(1, 1, 4, "resize-conv-bilinear")[0](x)[0, 0]
    assert torch.equal(block[2:4, 2:4], torch.ones(2, 2)) and block.sum() == 4
    assert ramp.max() < 1 and (ramp > 0).sum() == 16 and torch.isclose(ramp.sum(), torch.tensor(4.0))


def test_blur_removes_a_period_2_lattice_and_keeps_a_flat_image() -> None:
    """[1, 2, 1] has zero response at Nyquist: a checkerboard on a flat field comes out as the flat field."""
    flat = torch.full((1, 3, 16, 16), 0.5)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1
    out = Blur(3)(flat + 0.1 * checker)
    assert out.shape == flat.shape
    # The border's replicated padding copies a pixel onto its own neighbour, so only the interior is exact.
    assert torch.allclose(out[..., 1:-1, 1:-1], flat[..., 1:-1, 1:-1], atol=1e-6)
