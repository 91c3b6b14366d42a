"""One GAN iteration as a plain function: D then G, logits losses (`losses.py`: bce with label smoothing, or
hinge), optional AMP, optional class labels for a conditional G and D.

It runs the same on the CPU, one GPU, or DDP-wrapped G and D. It returns detached tensors and never
calls `.item()`: the loop syncs with the device only at its log intervals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flowergan.train.gan.losses import Loss, Targets
from flowergan.train.gan.losses import d_loss as d_loss  # bce's, re-exported: callers of the step module use them
from flowergan.train.gan.losses import g_loss as g_loss


@dataclass
class StepOutput:
    loss_d: torch.Tensor
    loss_g: torch.Tensor
    d_real: torch.Tensor  # the loss's statistic of D(x): mean sigmoid(D(x)) under bce, the mean logit under hinge
    d_fake_before: torch.Tensor  # ... of D(G(z)) before D's update
    d_fake_after: torch.Tensor  # ... after D's update (as the PyTorch DCGAN tutorial reports them)


def r1_penalty(real_logits: torch.Tensor, d_input: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E |grad_x D(x)|^2 over the real batch, differentiable for D's update.

    `d_input` is the (augmented) real batch D saw, with requires_grad set before D's forward. `scale` (fp16: the
    GradScaler's scale as a device tensor) follows PyTorch's AMP gradient-penalty recipe: the gradient of scaled
    outputs, so that it does not underflow on its way back through an fp16 D, unscaled in fp32 by a division on
    the device (no host sync). A scaled gradient that overflowed gives a zero penalty whose gradients are not
    finite: the scaler skips D's step and backs off, as for any fp16 overflow, and the loss stays finite (the
    loop rolls back on a non-finite one).
    """
    if scale is None:
        (grad,) = torch.autograd.grad(real_logits.sum(), d_input, create_graph=True)
        return grad.float().square().sum(dim=(1, 2, 3)).mean()
    # The mean's gradient (1/n a logit) times the scale: the sum's (1 a logit) times 2**16, GradScaler's first
    # scale, is already past fp16's largest number. Multiplying by n / scale afterwards gives the sum's gradient.
    n = real_logits.numel()
    (scaled,) = torch.autograd.grad(real_logits.mean() * scale, d_input, create_graph=True)
    penalty = (scaled.float() * (n / scale)).square().sum(dim=(1, 2, 3)).mean()
    return torch.where(torch.isfinite(penalty), penalty, torch.zeros_like(penalty))


def r1_weight(step: int, gamma: float, every: int) -> float:
    """The R1 weight for G step `step` with lazy regularisation: gamma/2 * every on every `every`-th step, else 0."""
    return 0.5 * gamma * every if gamma > 0 and step % every == 0 else 0.0


def ema_decay_at(step: int, decay: float, warmup: float) -> float:
    """EMA decay at `step`: min(decay, (1 + step) / (warmup + step)), so early G_ema follows G closely rather
    than showing mostly the random init; warmup 0 keeps `decay` from the first step."""
    return decay if warmup <= 0 else min(decay, (1 + step) / (warmup + step))


def lr_factor(step: int, total: int, decay_steps: int) -> float:
    """The learning rates' multiplier for step `step` (0-based) of `total`: 1, then linear towards 0 over the last
    `decay_steps` (the last step still moves, by 1/decay_steps). A function of the step alone, so a resumed run
    sets the same rates whatever its optimizer state restored."""
    if decay_steps <= 0:
        return 1.0
    return min(1.0, (total - step) / decay_steps)


def has_native_bf16(device: torch.device) -> bool:
    """Whether the training GPU computes in bf16 natively: compute capability >= 8.0 (Ampere on). Not
    `torch.cuda.is_bf16_supported()`: it counts emulated bf16 (T4, V100: slower than fp16) and asks the current
    device, which need not be the training one."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for a config value and device."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None, False
    if amp == "auto":
        amp = "bf16" if has_native_bf16(device) else "fp16"
    if amp == "bf16":
        return torch.bfloat16, False  # bf16 has fp32's range: no loss scaling needed
    return torch.float16, True


class Precision:
    """Autocast plus the one GradScaler that both optimizers share (one `update()` per iteration)."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None, use_scaler: bool):
        self.device_type = device.type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def loss_scale(self, like: torch.Tensor) -> torch.Tensor | None:
        """The GradScaler's current scale as a tensor on `like`'s device (no host sync); None without a scaler."""
        if not self.scaler.is_enabled():
            return None
        return self.scaler.scale(torch.ones((), dtype=torch.float32, device=like.device))

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)


def _run(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """net(x), or net(x, y) with class labels: the unconditional nets are called exactly as before."""
    return net(x) if y is None else net(x, y)


def _no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
    # D is frozen during G's update, so DDP must not wait for D's gradients there.
    no_sync = getattr(module, "no_sync", None)  # DDP's, also reached through a torch.compile wrapper
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


def gan_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             reals: Sequence[torch.Tensor], zs: Sequence[torch.Tensor], precision: Precision,
             loss: Loss | Targets = Loss(), augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
             r1: float = 0.0, D_r1: nn.Module | None = None, real_ys: Sequence[torch.Tensor] | None = None,
             fake_ys: Sequence[torch.Tensor] | None = None) -> StepOutput:
    """len(reals) D updates (the D:G ratio), then one G update that reuses the last D update's fake batch.

    `loss` is a `losses.Loss` (bce or hinge); a bare `Targets` means bce with those targets. A conditional G and D
    take class labels: `real_ys[i]` are the labels of `reals[i]`, `fake_ys[i]` the classes G is asked for with
    `zs[i]` (both None for the unconditional DCGAN, whose calls stay G(z) and D(x)).
    r1 > 0 adds r1 * E|grad_x D(x)|^2 on the reals to D's loss (see `r1_weight` for gamma/2 and laziness); on
    those steps D's pass over the reals runs through `D_r1`, the same D uncompiled (DDP-wrapped where D is), when
    D is torch.compile'd: AOTAutograd, which inductor builds on, has no double backward.
    """
    if isinstance(loss, Targets):
        loss = Loss("bce", loss)
    if (real_ys is None) != (fake_ys is None):
        raise ValueError("a conditional step needs both real_ys and fake_ys (an unconditional one neither)")
    aug = augment or (lambda x: x)
    for i, (real, z) in enumerate(zip(reals, zs)):
        last = i == len(reals) - 1
        y_real, y_fake = (real_ys[i], fake_ys[i]) if real_ys is not None and fake_ys is not None else (None, None)
        # Update D. Only the last fake batch keeps G's graph: G's update reuses it (one G forward per step).
        opt_d.zero_grad(set_to_none=True)
        with precision.autocast():
            with contextlib.nullcontext() if last else torch.no_grad():
                fake = _run(G, z, y_fake)
            d_real_in = aug(real)
            if r1 > 0:  # a Python float: choosing the branch needs no device sync
                d_real_in = d_real_in.detach().requires_grad_(True)
            d_fake_in = aug(fake.detach())
            # The fakes first: a compiled D updates its BatchNorm buffers with in-place copies that autograd counts,
            # and the eager R1 pass over the reals saves those buffers for its backward, so nothing may follow it.
            fake_logits = _run(D, d_fake_in, y_fake)
            real_logits = _run(D_r1 if r1 > 0 and D_r1 is not None else D, d_real_in, y_real)
            loss_d = loss.d(real_logits.float(), fake_logits.float())
            if r1 > 0:
                loss_d = loss_d + r1 * r1_penalty(real_logits.float(), d_real_in, precision.loss_scale(real_logits))
        precision.backward_step(loss_d, opt_d)
        if not last:
            # GradScaler allows one step() per optimizer between update()s, so each extra D update closes its
            # own scaler round (with d_steps = 1 this is the single update() per iteration of the AMP docs).
            precision.scaler.update()

    # Update G. D is frozen meanwhile: its weight gradients from G's loss would be thrown away anyway.
    opt_g.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    try:
        with _no_sync(D), precision.autocast():
            after_logits = _run(D, aug(fake), y_fake)
            loss_g = loss.g(after_logits.float())
        precision.backward_step(loss_g, opt_g)
    finally:
        D.requires_grad_(True)
    precision.scaler.update()

    with torch.no_grad():
        return StepOutput(
            loss_d=loss_d.detach(),
            loss_g=loss_g.detach(),
            d_real=loss.statistic(real_logits),
            d_fake_before=loss.statistic(fake_logits),
            d_fake_after=loss.statistic(after_logits),
        )


@torch.no_grad()
def ema_update(G_ema: nn.Module, G: nn.Module, decay: float) -> None:
    """G_ema <- decay * G_ema + (1 - decay) * G for parameters; buffers (BN statistics) are copied."""
    ema_p: list[torch.Tensor] = list(G_ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in G.parameters()], 1.0 - decay)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
