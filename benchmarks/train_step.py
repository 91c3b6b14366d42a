"""flowergan's train step against the PyTorch DCGAN tutorial's loop, timed side by side in one process.

Both train the same DCGAN (64², nz 100, ngf = ndf = 64) on the same batch (64) with Adam 2e-4, β (0.5, 0.999).
The reference is written the tutorial's way: an nn.Sequential D ending in Sigmoid, BCELoss, fp32, two
backward passes for D, D's weight gradients computed (and discarded) during G's update, and `.item()`
for D(x) / D(G(z)) every iteration. flowergan runs `gan_step` + `ema_update` as its loop does; on a GPU
with bf16 autocast, channels_last, fused Adam and optionally torch.compile.

The machine may be shared and noisy, so the two alternate in short rounds (AB, BA, AB, ...); img/s figures
are medians over rounds, and the last line, `train_step ratio=<flowergan img/s / reference img/s>`, is the
median over rounds of the ratio within each round.

    python benchmarks/train_step.py                      # CPU, about 2 minutes on 2 cores
    python benchmarks/train_step.py --device cuda --compile

`--conditional concat|projection` adds a third side, flowergan's step for a class-conditional G and D (`--classes`
classes, fake classes drawn per step as the loop draws them, `--loss`), interleaved with the others, and prints
`conditional ratio=<conditional img/s / unconditional flowergan img/s>` (the goal: >= 0.91, at most 10 % slower).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from flowergan.config import ModelConfig
from flowergan.devices import normalize
from flowergan.models import build_models
from flowergan.train.gan.augment import make_augment
from flowergan.train.gan.labels import FakeClasses
from flowergan.train.gan.losses import Loss
from flowergan.train.gan.step import Precision, Targets, ema_update, gan_step, resolve_amp

# ---------------------------------------------------------------------------------------------------------------
# The reference: the PyTorch DCGAN tutorial's networks and loop, fp32 throughout.


def tutorial_G(nz: int = 100, ngf: int = 64, nc: int = 3) -> nn.Sequential:
    """The tutorial's generator: z [B, nz, 1, 1] -> 64x64 image."""
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
    )


def tutorial_D(ndf: int = 64, nc: int = 3) -> nn.Sequential:
    """The tutorial's discriminator: 64x64 image -> probability (Sigmoid at the end)."""
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
    )


def tutorial_init(m: nn.Module) -> None:
    """The tutorial's weights_init: conv N(0, 0.02), BatchNorm N(1, 0.02) and 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def make_reference(real: torch.Tensor, nz: int, device: torch.device, ngf: int = 64,
                   ndf: int = 64) -> Callable[[], None]:
    """One tutorial iteration per call, on the fixed batch `real` (gpu_check.py --quick narrows ngf, ndf)."""
    netG, netD = tutorial_G(nz, ngf).to(device), tutorial_D(ndf).to(device)
    netG.apply(tutorial_init)
    netD.apply(tutorial_init)
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0
    b_size = real.size(0)
    stats: list[float] = []

    def step() -> None:
        # (1) Update D: maximise log(D(x)) + log(1 - D(G(z))).
        netD.zero_grad()
        label = torch.full((b_size,), real_label, dtype=torch.float, device=device)
        output = netD(real).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        noise = torch.randn(b_size, nz, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        optimizerD.step()
        # (2) Update G: maximise log(D(G(z))).
        netG.zero_grad()
        label.fill_(real_label)
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        optimizerG.step()
        stats[:] = [D_x, D_G_z1, D_G_z2]

    return step


# ---------------------------------------------------------------------------------------------------------------
# flowergan: the same set-up as flowergan.train.loop (models, optimizers, precision, EMA, noise per step).


def make_flowergan(real: torch.Tensor, device: torch.device, *, amp: str, channels_last: bool, fused: bool,
                   compile: bool, compile_mode: str, ema: bool, diffaugment: str, conditional: str = "none",
                   num_classes: int = 0, loss: str = "bce") -> Callable[[], None]:
    """One flowergan iteration (`gan_step` then `ema_update`) per call, on the fixed batch `real`; a conditional G
    and D (`conditional`) get the batch's labels and fake classes drawn per step, as the loop does."""
    cfg = ModelConfig(conditional=conditional, num_classes=num_classes if conditional != "none" else 0)
    G, D = build_models(cfg)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    G.to(device, memory_format=memory_format)
    D.to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if ema else None
    adam = {"fused": True} if fused else {"foreach": True}  # as the training loop builds them
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), **adam)
    precision = Precision(device, *resolve_amp(amp, device))
    G_train, D_train = (torch.compile(G, mode=compile_mode), torch.compile(D, mode=compile_mode)) if compile else (G, D)
    real = real.contiguous(memory_format=memory_format)
    augment = make_augment(diffaugment)
    objective = Loss(loss, Targets())
    y_real = (torch.arange(real.shape[0]) % max(num_classes, 1)).to(device)
    fake_classes = FakeClasses([1] * num_classes, "data", device) if conditional != "none" else None

    def step() -> None:
        z = torch.randn(real.shape[0], cfg.nz, device=device)
        if fake_classes is None:
            gan_step(G_train, D_train, opt_g, opt_d, [real], [z], precision, objective, augment)
        else:
            gan_step(G_train, D_train, opt_g, opt_d, [real], [z], precision, objective, augment, real_ys=[y_real],
                     fake_ys=[fake_classes.draw(real.shape[0])])
        if G_ema is not None:
            ema_update(G_ema, G, 0.999)

    return step


# ---------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds for n iterations, with the device drained before and after."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """Run the interleaved benchmark and print img/s for both and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per side (default: cpu 12, cuda 10)")
    p.add_argument("--steps", type=int, default=None, help="iterations per round (default: cpu 1, cuda 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations per side (default: cpu 1, cuda 20)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="flowergan's precision (auto = bf16 on a GPU that has it, fp32 on the CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="flowergan in NHWC (default: on for cuda)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="flowergan's fused Adam (default: on for cuda)")
    p.add_argument("--compile", action="store_true", help="torch.compile flowergan's G and D")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode, e.g. max-autotune-no-cudagraphs or reduce-overhead (CUDA graphs)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="leave out flowergan's EMA update")
    p.add_argument("--diffaugment", default="", help="flowergan's DiffAugment policy (off by default, as the tutorial)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--conditional", default="none", choices=("none", "concat", "projection"),
                   help="also time flowergan's step for a class-conditional G and D, against the unconditional one")
    p.add_argument("--classes", type=int, default=102, help="classes of the conditional side (Oxford-102: 102)")
    p.add_argument("--loss", default="bce", choices=("bce", "hinge"), help="the conditional side's train.loss")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    device = normalize(device)  # "cuda" -> "cuda:N", the device its tensors report
    gpu = device.type == "cuda"
    rounds = args.rounds or (10 if gpu else 12)
    steps = args.steps or (50 if gpu else 1)
    warmup = args.warmup if args.warmup is not None else (20 if gpu else 1)
    channels_last = gpu if args.channels_last is None else args.channels_last
    fused = gpu if args.fused is None else args.fused
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cudnn.benchmark = True  # global: it speeds up both sides alike

    torch.manual_seed(args.seed)
    real = (torch.rand(args.batch, 3, 64, 64) * 2 - 1).to(device)
    sides = {
        "reference": make_reference(real, 100, device),
        "flowergan": make_flowergan(real, device, amp=args.amp, channels_last=channels_last, fused=fused,
                                    compile=args.compile, compile_mode=args.compile_mode, ema=args.ema,
                                    diffaugment=args.diffaugment),
    }
    if args.conditional != "none":
        sides["conditional"] = make_flowergan(real, device, amp=args.amp, channels_last=channels_last, fused=fused,
                                              compile=args.compile, compile_mode=args.compile_mode, ema=args.ema,
                                              diffaugment=args.diffaugment, conditional=args.conditional,
                                              num_classes=args.classes, loss=args.loss)
    dtype, _ = resolve_amp(args.amp, device)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"train_step: DCGAN 64x64, batch {args.batch}, {name}, torch {torch.__version__}")
    print("  reference: tutorial loop, Sigmoid + BCELoss, fp32, Adam, .item() per iteration")
    precision = str(dtype).replace("torch.", "") if dtype else "fp32"
    print(f"  flowergan: gan_step{' + EMA' if args.ema else ''}, {precision}, "
          f"channels_last={channels_last}, fused Adam={fused}, compile={args.compile}"
          f"{f' ({args.compile_mode})' if args.compile else ''}"
          f"{f', diffaugment={args.diffaugment}' if args.diffaugment else ''}")
    if args.conditional != "none":
        print(f"  conditional: the same with model.conditional={args.conditional}, {args.classes} classes, "
              f"train.loss={args.loss}")
    print(f"  {rounds} rounds x {steps} iterations per side, interleaved, after {warmup} warm-up iterations")

    for step in sides.values():
        time_steps(step, warmup, device)

    rates: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:  # AB, BA, ...: drift hits both sides alike
            rates[key].append(steps * args.batch / time_steps(sides[key], steps, device))
        print(f"  round {r + 1}/{rounds}: " + "  ".join(f"{k} {rates[k][-1]:8.1f} img/s" for k in order), flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    paired = statistics.median(f / ref for f, ref in zip(rates["flowergan"], rates["reference"], strict=True))
    for k in order:
        spread = f"{min(rates[k]):.1f}..{max(rates[k]):.1f}"
        print(f"{k:>10}: {med[k]:9.1f} img/s (median of {rounds}; range {spread})")
    print(f"ratio of the medians: {med['flowergan'] / med['reference']:.3f}")
    if "conditional" in rates:  # paired per round like the last line: the price of conditioning, same machine
        cond = statistics.median(c / f for c, f in zip(rates["conditional"], rates["flowergan"], strict=True))
        print(f"conditional ratio={cond:.3f} (conditional img/s / unconditional flowergan img/s; goal >= 0.91)")
    # The final figure pairs each round's two sides, which ran seconds apart: load that drifts over the
    # run (other jobs on a shared machine) cancels out of each pair.
    print(f"train_step ratio={paired:.3f}")


if __name__ == "__main__":
    main()
