"""The GAN step on 16x16 models: isolation of the D and G updates, targets, AMP, D:G ratio, seeding, EMA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowergan.models import Discriminator, Generator
from flowergan.train.gan.augment import make_augment
from flowergan.train.gan.step import (
    Precision,
    Targets,
    d_loss,
    ema_decay_at,
    ema_update,
    g_loss,
    gan_step,
    lr_factor,
    r1_penalty,
    r1_weight,
    resolve_amp,
)

NZ, B, R = 8, 4, 16
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _setup(seed: int = 0, d_steps: int = 1, **d_options):
    """Tiny seeded G, D, their Adam optimizers, and d_steps batches of real images and z."""
    torch.manual_seed(seed)
    G, D = Generator(NZ, 8, R), Discriminator(8, R, **d_options)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed + 1)
    reals = [torch.rand(B, 3, R, R, generator=g) * 2 - 1 for _ in range(d_steps)]
    zs = [torch.randn(B, NZ, generator=g) for _ in range(d_steps)]
    return G, D, opt_g, opt_d, reals, zs


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _grads(m: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _fp32() -> Precision:
    return Precision(CPU, None, False)


def test_d_update_leaves_g_alone_and_g_update_leaves_d_alone() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    G0, D0 = _params(G), _params(D)
    seen: dict[str, list] = {}

    def after_d_step(opt, args, kwargs):
        seen["G_at_d"], seen["G_grad_at_d"] = _params(G), _grads(G)
        seen["D_after_d"], seen["D_grad_at_d"] = _params(D), _grads(D)

    def before_g_step(opt, args, kwargs):
        seen["D_at_g"] = _params(D)

    opt_d.register_step_post_hook(after_d_step)
    opt_g.register_step_pre_hook(before_g_step)
    gan_step(G, D, opt_g, opt_d, reals, zs, _fp32())

    # D's update: D moved, G did not, and D's loss sent no gradient into G (the fake was detached).
    assert not _same(seen["D_after_d"], D0)
    assert _same(seen["G_at_d"], G0)
    assert all(g is None for g in seen["G_grad_at_d"])
    # G's update: G moved, D did not, and D was frozen: its gradients are still exactly those of its own loss.
    assert not _same(_params(G), G0)
    assert _same(seen["D_at_g"], seen["D_after_d"]) and _same(_params(D), seen["D_after_d"])
    assert all(torch.equal(a, b) for a, b in zip(_grads(D), seen["D_grad_at_d"], strict=True))
    assert all(p.requires_grad for p in D.parameters())  # unfrozen again


def test_losses_match_a_hand_written_step() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = gan_step(G, D, opt_g, opt_d, reals, zs, _fp32())

    # The same iteration by hand with the BCE formula and the 0.9 / 0.1 / 1.0 targets written out.
    fake = G0(zs[0])
    real_logits, fake_logits = D0(reals[0]), D0(fake.detach())

    def bce(logits: torch.Tensor, t: float) -> torch.Tensor:
        return -(t * F.logsigmoid(logits) + (1 - t) * F.logsigmoid(-logits)).mean()

    assert torch.allclose(out.loss_d, bce(real_logits, 0.9) + bce(fake_logits, 0.1), atol=1e-6)
    assert torch.allclose(out.d_real, torch.sigmoid(real_logits).mean(), atol=1e-6)
    assert torch.allclose(out.d_fake_before, torch.sigmoid(fake_logits).mean(), atol=1e-6)
    # G's loss is taken with the updated D (D's parameters after the step are the updated ones).
    after_logits = D(fake)
    loss_g = bce(after_logits, 1.0)
    assert torch.allclose(out.loss_g, loss_g, atol=1e-6)
    assert torch.allclose(out.d_fake_after, torch.sigmoid(after_logits).mean(), atol=1e-6)
    # ... and G's gradient is exactly that loss's gradient w.r.t. G.
    loss_g.backward()
    for p, p0 in zip(G.parameters(), G0.parameters(), strict=True):
        assert torch.allclose(p.grad, p0.grad, atol=1e-6, rtol=1e-5)
    # Everything returned is a detached scalar.
    for v in vars(out).values():
        assert v.dim() == 0 and not v.requires_grad and torch.isfinite(v)
    assert 0 < out.d_real < 1 and 0 < out.d_fake_before < 1 and 0 < out.d_fake_after < 1


def test_label_smoothing_targets_by_hand() -> None:
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.25])

    def bce(l: float, t: float) -> float:
        s = 1 / (1 + math.exp(-l))
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    want_d = sum(bce(v, 0.9) for v in real.tolist()) / 3 + sum(bce(v, 0.1) for v in fake.tolist()) / 2
    assert d_loss(real, fake, Targets()).item() == pytest.approx(want_d, rel=1e-6)
    want_g = sum(bce(v, 1.0) for v in fake.tolist()) / 2
    assert g_loss(fake, Targets()).item() == pytest.approx(want_g, rel=1e-6)
    # Every target is configurable.
    t = Targets(real=1.0, fake=0.0, g=0.9)
    assert d_loss(real, fake, t).item() == pytest.approx(
        sum(bce(v, 1.0) for v in real.tolist()) / 3 + sum(bce(v, 0.0) for v in fake.tolist()) / 2, rel=1e-6)
    assert g_loss(fake, t).item() == pytest.approx(sum(bce(v, 0.9) for v in fake.tolist()) / 2, rel=1e-6)


def test_step_uses_the_targets_it_is_given() -> None:
    outs = []
    for targets in (Targets(), Targets(real=1.0, fake=0.0, g=0.9)):
        G, D, opt_g, opt_d, reals, zs = _setup()
        outs.append(gan_step(G, D, opt_g, opt_d, reals, zs, _fp32(), targets))
    assert torch.equal(outs[0].d_real, outs[1].d_real)  # same inputs and initial D...
    assert not torch.isclose(outs[0].loss_d, outs[1].loss_d)  # ... different targets, different losses
    assert not torch.isclose(outs[0].loss_g, outs[1].loss_g)


def _run(seed: int, steps: int = 3, **d_options) -> tuple[list, list[torch.Tensor]]:
    G, D, opt_g, opt_d, reals, zs = _setup(seed, **d_options)
    augment = make_augment("color,translation,cutout")
    torch.manual_seed(seed)
    outs = [gan_step(G, D, opt_g, opt_d, reals, zs, _fp32(), augment=augment) for _ in range(steps)]
    return outs, _params(G) + _params(D)


def test_same_seed_same_result() -> None:
    # Dropout and DiffAugment draw from the global RNG inside the step: seeding must pin them too.
    (o1, p1), (o2, p2), (o3, p3) = _run(0, dropout=0.1), _run(0, dropout=0.1), _run(1, dropout=0.1)
    assert all(torch.equal(a.loss_d, b.loss_d) and torch.equal(a.loss_g, b.loss_g) for a, b in zip(o1, o2, strict=True))
    assert _same(p1, p2)
    assert not _same(p1, p3)
    assert all(torch.isfinite(v) for o in o1 + o3 for v in vars(o).values())


def _dtype_seen_by_d(D: nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    first_conv = next(m for m in D.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    return dtypes


def test_bf16_autocast_on_cpu() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    G0, D0 = _params(G), _params(D)
    dtypes = _dtype_seen_by_d(D)
    out = gan_step(G, D, opt_g, opt_d, reals, zs, Precision(CPU, torch.bfloat16, False))
    assert dtypes and set(dtypes) == {torch.bfloat16}  # autocast really ran D in bf16
    for v in vars(out).values():
        assert v.dtype == torch.float32 and torch.isfinite(v)
    assert all(p.dtype == torch.float32 for p in G.parameters())  # master weights stay fp32
    assert not _same(_params(G), G0) and not _same(_params(D), D0)


def test_fp16_with_grad_scaler_on_cpu_and_d_steps_2() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup(d_steps=2)
    G0, D0 = _params(G), _params(D)
    dtypes = _dtype_seen_by_d(D)
    precision = Precision(CPU, torch.float16, True)
    assert precision.scaler.is_enabled()
    for _ in range(4):
        out = gan_step(G, D, opt_g, opt_d, reals, zs, precision)
        assert all(torch.isfinite(v) for v in vars(out).values())
    assert set(dtypes) == {torch.float16}
    state = precision.scaler.state_dict()
    assert math.isfinite(state["scale"]) and state["scale"] > 0
    assert not _same(_params(G), G0) and not _same(_params(D), D0)


def test_d_to_g_ratio() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup(d_steps=2)
    calls = {"opt_d": 0, "opt_g": 0, "G": 0, "D": 0}

    def count(key: str):
        def hook(*_):
            calls[key] += 1
        return hook

    opt_d.register_step_post_hook(count("opt_d"))
    opt_g.register_step_post_hook(count("opt_g"))
    G.register_forward_hook(count("G"))
    D.register_forward_hook(count("D"))
    out = gan_step(G, D, opt_g, opt_d, reals, zs, _fp32())
    # Two D updates (real + fake each), one G update that reuses the last fake batch.
    assert calls == {"opt_d": 2, "opt_g": 1, "G": 2, "D": 5}
    assert all(torch.isfinite(v) for v in vars(out).values())


def test_augment_applies_to_real_and_fake_and_passes_gradients_to_g() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    base = make_augment("translation,cutout")
    inputs: list[torch.Tensor] = []

    def augment(x: torch.Tensor) -> torch.Tensor:
        inputs.append(x)
        return base(x)

    D_inputs: list[torch.Tensor] = []
    D.register_forward_pre_hook(lambda m, args: D_inputs.append(args[0]))
    torch.manual_seed(0)
    gan_step(G, D, opt_g, opt_d, reals, zs, _fp32(), augment=augment)
    assert len(inputs) == 3 and inputs[0] is reals[0]  # real, detached fake, fake for G's update
    assert not inputs[1].requires_grad and inputs[2].requires_grad
    # D saw augmented images: cutout zeroes a square in each.
    assert all((x == 0).all(1).sum() >= (R // 4) ** 2 * B for x in D_inputs)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())
    assert sum(p.grad.abs().sum() for p in G.parameters()) > 0


def test_channels_last_step() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    reals = [r.contiguous(memory_format=torch.channels_last) for r in reals]
    out = gan_step(G, D, opt_g, opt_d, reals, zs, _fp32(), augment=make_augment("color,translation,cutout"))
    assert all(torch.isfinite(v) for v in vars(out).values())


def test_d_is_unfrozen_even_when_g_update_fails() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    n = {"calls": 0}

    def augment(x: torch.Tensor) -> torch.Tensor:
        n["calls"] += 1
        if n["calls"] == 3:  # the call inside G's update
            raise RuntimeError("boom")
        return x

    with pytest.raises(RuntimeError, match="boom"):
        gan_step(G, D, opt_g, opt_d, reals, zs, _fp32(), augment=augment)
    assert all(p.requires_grad for p in D.parameters())


def test_ema_update_math() -> None:
    torch.manual_seed(0)
    G = Generator(NZ, 8, R)
    G_ema = copy.deepcopy(G)
    old = _params(G_ema)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
        for b in G.buffers():
            b.add_(1)
    ema_update(G_ema, G, 0.9)
    for e, o, p in zip(G_ema.parameters(), old, G.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * o + 0.1 * p, atol=1e-6)
    for e, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        assert torch.equal(e, b)  # BN statistics are copied, not averaged
    ema_update(G_ema, G, 0.0)
    assert _same(_params(G_ema), _params(G))
    frozen = _params(G_ema)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1)
    ema_update(G_ema, G, 1.0)
    assert _same(_params(G_ema), frozen)


@pytest.mark.parametrize(
    ("amp", "device", "want"),
    [
        ("auto", "cpu", (None, False)),
        ("off", "cpu", (None, False)),
        ("bf16", "cpu", (torch.bfloat16, False)),
        ("fp16", "cpu", (torch.float16, True)),
        ("off", "cuda", (None, False)),
        ("fp16", "cuda", (torch.float16, True)),
    ],
)
def test_resolve_amp(amp: str, device: str, want: tuple) -> None:
    assert resolve_amp(amp, torch.device(device)) == want


def test_amp_auto_asks_the_training_gpu_for_native_bf16(monkeypatch) -> None:
    """bf16 where the training device has it natively (compute capability >= 8.0: A100, H100), else fp16; never
    `is_bf16_supported()`, which says True for GPUs that only emulate bf16 (T4, V100) and asks the current GPU."""
    caps = {0: (9, 0), 1: (7, 5)}  # e.g. an H100 as cuda:0 (the current device) and a T4 as cuda:1
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: caps[torch.device(device).index])
    assert resolve_amp("auto", torch.device("cuda", 0)) == (torch.bfloat16, False)
    assert resolve_amp("auto", torch.device("cuda", 1)) == (torch.float16, True)


def test_train_step_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--rounds", "1", "--steps", "1", "--warmup", "0", "--batch", "2", "--diffaugment", "translation"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("train_step ratio=") and float(last.split("=")[1]) > 0


def test_r1_penalty_is_the_squared_input_gradient_of_d() -> None:
    # D(x) = <w, x> has grad_x D = w for every image: the penalty is |w|^2, and it is differentiable in w.
    w = torch.randn(3, R, R, requires_grad=True)
    x = torch.rand(B, 3, R, R).requires_grad_(True)
    penalty = r1_penalty((x * w).sum(dim=(1, 2, 3)), x)
    assert torch.allclose(penalty, w.detach().square().sum())
    (gw,) = torch.autograd.grad(penalty, w)
    assert torch.allclose(gw, 2 * w.detach())


def test_r1_adds_gamma_half_times_the_penalty_to_d_loss_only() -> None:
    G, D, opt_g, opt_d, reals, zs = _setup()
    D_before = copy.deepcopy(D)
    G0, D0, opt_g0, opt_d0, _, _ = _setup()
    out0 = gan_step(G0, D0, opt_g0, opt_d0, reals, zs, _fp32())
    out = gan_step(G, D, opt_g, opt_d, reals, zs, _fp32(), r1=r1_weight(0, 10.0, 1))
    # The penalty D had before its update, computed by hand (train-mode BN like the step's forward).
    x = reals[0].clone().requires_grad_(True)
    want = r1_penalty(D_before(x).float(), x).detach()
    assert torch.allclose(out.loss_d, out0.loss_d + 5.0 * want, rtol=1e-5)
    assert torch.equal(out.d_real, out0.d_real)  # the same forward of D on the reals, before any update
    assert not _same(_params(D), _params(D0))  # the penalty's gradient reached D's update
    assert torch.isfinite(out.loss_g)


def test_r1_weight_is_lazy_and_off_at_gamma_zero() -> None:
    assert r1_weight(0, 10.0, 1) == r1_weight(7, 10.0, 1) == 5.0
    assert [r1_weight(s, 10.0, 4) for s in range(5)] == [20.0, 0.0, 0.0, 0.0, 20.0]  # gamma/2 x k every k-th step
    assert r1_weight(0, 0.0, 1) == 0.0


def test_ema_decay_warm_up() -> None:
    assert ema_decay_at(0, 0.999, 10.0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(90, 0.999, 10.0) == pytest.approx(0.91)
    assert ema_decay_at(10**6, 0.999, 10.0) == 0.999
    assert ema_decay_at(0, 0.999, 0.0) == 0.999  # no warm-up
    assert ema_decay_at(5, 0.9, 100.0) == pytest.approx(6 / 105)


def test_lr_decay_is_linear_to_zero_over_the_last_steps() -> None:
    assert [lr_factor(s, 10, 0) for s in (0, 9)] == [1.0, 1.0]  # off
    assert [lr_factor(s, 10, 4) for s in range(10)] == [1.0] * 6 + [1.0, 0.75, 0.5, 0.25]
    assert lr_factor(0, 10, 20) == 0.5  # longer than the run: the run starts part-way down the ramp


def _faint_d() -> nn.Module:
    """A D whose input gradients (~1e-9 a pixel) are below fp16's smallest number (6e-8): R1's fp16 trap."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 4, 3, padding=1),
                      nn.LeakyReLU(0.2), nn.Conv2d(4, 1, R), nn.Flatten(0))
    with torch.no_grad():
        for m in D.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(1e-2)
    return D


def _penalties_seen(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    import flowergan.train.gan.step as step_module

    seen: list[torch.Tensor] = []
    real_r1 = step_module.r1_penalty

    def spy(*args, **kwargs):
        seen.append(real_r1(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(step_module, "r1_penalty", spy)
    return seen


def test_r1_under_fp16_scales_the_outputs_so_the_gradient_does_not_underflow(monkeypatch) -> None:
    """PyTorch's AMP gradient-penalty recipe: the input gradient of scaled outputs, unscaled in fp32."""
    G, _, opt_g, _, reals, zs = _setup()
    D = _faint_d()
    x = reals[0].clone().requires_grad_(True)
    want = r1_penalty(D(x), x).detach()  # fp32
    with torch.autocast("cpu", dtype=torch.float16):  # the fault: unscaled, fp16 flushes it to zero
        assert r1_penalty(D(x).float(), x) == 0
    seen = _penalties_seen(monkeypatch)
    opt_d = torch.optim.Adam(D.parameters(), 1e-3)
    gan_step(G, D, opt_g, opt_d, reals, zs, Precision(CPU, torch.float16, True), r1=5.0)
    assert want > 0 and torch.allclose(seen[0].detach(), want, rtol=0.05, atol=0), (seen[0], want)


def test_an_overflowing_r1_under_fp16_is_the_scalers_to_skip_not_a_non_finite_loss(monkeypatch) -> None:
    """A scale too large for the penalty's gradient: the loss stays finite (the loop would roll back on a
    non-finite one), D's step is skipped and the scaler backs off, as for any fp16 overflow."""
    G, D, opt_g, opt_d, reals, zs = _setup()
    precision = Precision(CPU, torch.float16, True)
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    D0 = _params(D)
    seen = _penalties_seen(monkeypatch)
    out = gan_step(G, D, opt_g, opt_d, reals, zs, precision, r1=5.0)
    assert seen and seen[0] == 0 and torch.isfinite(out.loss_d)
    assert _same(_params(D), D0) and precision.scaler.get_scale() < 2.0**40
