"""Train-step throughput for gpu_check.py: the PyTorch DCGAN tutorial's loop against flowergan's, per batch size.

Variants (each trains its own DCGAN 64x64, nz 100, ngf = ndf = 64, Adam 2e-4, beta (0.5, 0.999)):

* tutorial, ImageFolder: `train_step.make_reference` (the tutorial's loop, fp32, `.item()` per iteration) fed by
  the tutorial's own loader: torchvision ImageFolder + PIL transforms in a DataLoader with 8 workers, each batch
  copied to the device as the tutorial does (`data[0].to(device)`), epochs restarting the workers;
* tutorial, GPU tensors: the same loop on one batch already on the device (the loop alone);
* flowergan fp32, bf16, bf16 + channels_last, bf16 + channels_last + torch.compile (CUDA graphs on CUDA): the
  training loop's own pieces (build_models, fused Adam, Precision, compiling.py, gan_step, ema_update) fed by
  flowergan's stream with `data.cache = "auto"` (on a GPU: the decoded set on the device), training the recipe of
  the job file the end-to-end run trains (`Recipe`: R1 and DiffAugment), so the variant picked for that run is
  the one fastest at what it will run.

Variants alternate within each round (ABC..., then reversed); img/s is the median over rounds, and every ratio is
the median of the per-round ratios to a tutorial variant of the same round. FLOPs are counted from the networks'
convolution shapes (`step_flops`), so TFLOP/s is useful work, the same count for every variant.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from flowergan.config import DataConfig, ModelConfig, TrainConfig
from flowergan.data.loader.protocol import BatchStream
from flowergan.models import build_models
from flowergan.train.gan.augment import make_augment
from flowergan.train.gan.compiling import compile_nets, cudnn_autotune, pick_memory_format
from flowergan.train.gan.step import Precision, Targets, ema_update, gan_step, r1_weight, resolve_amp

Step = Callable[[], None]

# Dense bf16 tensor-core rate by the vendor's datasheets (SXM parts), TFLOP/s: the "peak" TFLOP/s are compared to.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}

# --------------------------------------------------------------------------------------------------------------
# FLOPs, counted from the convolution shapes of one forward pass.


def _conv_flops(net: nn.Module, x: torch.Tensor) -> list[float]:
    """2 x multiply-adds of each convolution / linear layer of `net(x)` for one sample, in call order."""
    flops: list[float] = []

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(m, nn.ConvTranspose2d):  # every input pixel meets every output channel's k x k kernel
            i = inputs[0]
            macs = i.shape[2] * i.shape[3] * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Conv2d):  # every output pixel reads k x k x C_in inputs
            macs = out.shape[2] * out.shape[3] * m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs = m.in_features * m.out_features
        flops.append(2.0 * macs / max(1, getattr(m, "groups", 1)))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    return flops


def step_flops(cfg: ModelConfig) -> dict[str, float]:
    """FLOPs per image of one GAN iteration (d_steps = 1), convolutions only (BN, activations, Adam: < 1%).

    flowergan: G forward; D forward on real, fake and fake again for G; D's backward for its loss on real and on
    fake (weight gradients plus input gradients of all but D's first layer: neither input needs a gradient);
    during G's update D's input gradients only (D frozen), then G's backward (weights, and inputs of all but G's
    first layer). The tutorial also computes D's weight gradients in G's update: one more D forward's worth.
    """
    G, D = build_models(cfg)
    g = _conv_flops(G, torch.zeros(1, cfg.nz))
    d = _conv_flops(D, torch.zeros(1, 3, cfg.resolution, cfg.resolution))
    g_f, d_f = sum(g), sum(d)
    flowergan = (g_f + 3 * d_f                      # forwards
                 + 2 * (d_f + d_f - d[0])           # D's update: weight + input gradients, real and fake
                 + d_f                              # G's update through frozen D: input gradients only
                 + g_f + g_f - g[0])                # G's backward: weight + input gradients
    return {"G_forward": g_f, "D_forward": d_f, "flowergan_step": flowergan, "tutorial_step": flowergan + d_f}


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """A large bf16 matrix product's rate on random data (the ceiling a convolution's GEMM can reach here)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def datasheet_peak(device: torch.device) -> float | None:
    """The chip's dense bf16 rate from its datasheet, when it is one we know."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


# --------------------------------------------------------------------------------------------------------------
# The variants: each is a zero-argument step that trains one iteration.


def _cycle(make_loader: Callable[[], torch.utils.data.DataLoader]) -> Iterator:
    """The tutorial's `for epoch ...: for data in dataloader`: a fresh pass (and fresh workers) per epoch."""
    while True:
        yield from make_loader()


def tutorial_imagefolder(root: Path, batch: int, workers: int, device: torch.device, width: int = 64) -> Step:
    """The tutorial's loop fed by its ImageFolder loader: one device copy of each batch, then the step."""
    import torchvision.datasets as dset
    import torchvision.transforms as T
    from train_step import make_reference

    dataset = dset.ImageFolder(str(root), transform=T.Compose([
        T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    if len(dataset) < batch:
        raise SystemExit(f"error: {root} holds {len(dataset)} images, fewer than a batch of {batch}")
    # drop_last: the reference reuses one device tensor of the batch's shape (the tutorial's last batch is smaller).
    batches = _cycle(lambda: torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                                         num_workers=workers, drop_last=True))
    real = torch.empty(batch, 3, 64, 64, device=device)
    step = make_reference(real, 100, device, width, width)

    def run() -> None:
        data = next(batches)
        real.copy_(data[0])  # = the tutorial's real_cpu = data[0].to(device): a blocking copy
        step()

    return run


def tutorial_tensors(real: torch.Tensor, device: torch.device, width: int = 64) -> Step:
    """The tutorial's loop on one batch already on the device."""
    from train_step import make_reference

    return make_reference(real.to(device), 100, device, width, width)


@dataclass(frozen=True)
class Recipe:
    """What a job trains beyond the bare DCGAN step: R1 (gamma, every k steps) and the DiffAugment policy."""

    r1_gamma: float = 0.0
    r1_every: int = 1
    diffaugment: str = ""

    @classmethod
    def of_job(cls, path: Path) -> Recipe:
        """The recipe `path` (a job TOML) sets."""
        from flowergan.config import load_config

        tc = load_config(path).train
        return cls(tc.r1_gamma, tc.r1_every, tc.diffaugment)


@dataclass
class Variant:
    """One flowergan set-up: precision, memory format and compiling, as the TrainConfig fields say."""

    name: str
    amp: str = "off"
    channels_last: str = "false"
    compile: bool = False
    compile_mode: str = "reduce-overhead"
    sets: list[str] = field(default_factory=list)  # the same as `flowergan train --set` options

    def train_config(self, batch: int) -> TrainConfig:
        return TrainConfig(batch_size=batch, amp=self.amp, channels_last=self.channels_last, compile=self.compile,
                           compile_mode=self.compile_mode)


FLOWERGAN_VARIANTS = [
    Variant("flowergan_fp32", "off", "false", sets=["train.amp=off", "train.channels_last=false"]),
    Variant("flowergan_bf16", "bf16", "false", sets=["train.amp=bf16", "train.channels_last=false"]),
    Variant("flowergan_bf16_cl", "bf16", "true", sets=["train.amp=bf16", "train.channels_last=true"]),
    Variant("flowergan_bf16_cl_compile", "bf16", "true", compile=True,
            sets=["train.amp=bf16", "train.channels_last=true", "train.compile=true",
                  "train.compile_mode=reduce-overhead"]),
]


def flowergan_stream(shards: Path, batch: int, workers: int, device: torch.device) -> BatchStream:
    """flowergan's batch stream with `data.cache = "auto"`, shared by the variants of one batch size."""
    from flowergan.data import build_stream

    return build_stream(DataConfig(path=str(shards), workers=workers, cache="auto"), batch_size=batch,
                        resolution=64, seed=0, device=device)


def flowergan_step(stream: BatchStream, variant: Variant, batch: int, device: torch.device, width: int = 64,
                   recipe: Recipe = Recipe()) -> Step:
    """One iteration of flowergan's loop body (batch from its stream, noise, gan_step with `recipe`, EMA), set up
    as loop.py sets it up (R1 through the uncompiled D, cuDNN autotuning around the step)."""
    tc = variant.train_config(batch)
    torch.manual_seed(0)
    G, D = build_models(ModelConfig(ngf=width, ndf=width))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    memory_format = pick_memory_format(tc, device)
    for m in (G, D, G_ema):
        m.to(device).to(memory_format=memory_format)
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}  # optim.fused = "auto"
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), **fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), **fused)
    precision = Precision(device, *resolve_amp(tc.amp, device))
    G_train, D_train = compile_nets(G, D, tc, device)
    augment = make_augment(recipe.diffaugment) if recipe.diffaugment else None
    batches = stream.iter_from(0)
    targets = Targets()
    state = {"step": 0}

    def run() -> None:
        x, _labels = next(batches)
        real = x.to(device, non_blocking=True, memory_format=memory_format)
        z = torch.randn(batch, 100, device=device)
        with cudnn_autotune(device):
            gan_step(G_train, D_train, opt_g, opt_d, [real], [z], precision, targets, augment,
                     r1=r1_weight(state["step"], recipe.r1_gamma, recipe.r1_every), D_r1=D)
        ema_update(G_ema, G, min(0.999, (1 + state["step"]) / (10 + state["step"])))
        state["step"] += 1

    return run


# --------------------------------------------------------------------------------------------------------------
# Timing.


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, n: int, device: torch.device) -> float:
    """Seconds for n iterations, the device drained before and after (train_step.py's timer)."""
    from train_step import time_steps

    return time_steps(step, n, device)


def warm_up(step: Step, n: int, device: torch.device) -> tuple[float, float | None]:
    """Run n untimed iterations (compiling, autotuning, loader start); (seconds, peak GiB allocated meanwhile)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, n, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def measure(steps: dict[str, Step], batch: int, device: torch.device, *, rounds: int, seconds: float,
            warmup: int, min_steps: int = 5) -> dict[str, dict]:
    """Interleaved rounds of each step; img/s medians, warm-up time and peak memory per variant."""
    out: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for name, step in steps.items():
        warm_s, peak = warm_up(step, warmup, device)
        per_step = timed(step, 2, device) / 2  # calibration: enough iterations to fill `seconds` per round
        counts[name] = max(min_steps, int(seconds / max(per_step, 1e-6)))
        out[name] = {"warmup_s": round(warm_s, 2), "peak_mem_gib": None if peak is None else round(peak, 3)}
    rates: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            rates[name].append(counts[name] * batch / timed(steps[name], counts[name], device))
    for name, values in rates.items():
        out[name].update(img_per_s=statistics.median(values), rounds=[float(f"{v:.5g}") for v in values],
                         steps_per_round=counts[name])
    return out


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a / b within a round."""
    return statistics.median(x / y for x, y in zip(a, b))
