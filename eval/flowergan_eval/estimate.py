"""How long an evaluation will take, measured before it starts: one small batch through G and through each extractor
the plan uses, scaled to the images it will push through them. The defaults (`--n 10000`, every real image) take
minutes on a GPU and can take hours on a CPU; the user hears that before waiting, with the N that would fit."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

WARN_AFTER_S = 600.0  # longer than this: a warning with the estimate, before the work starts
PROBE = 8  # images timed per network (after one warm-up call)
TRAIN_S_PER_IMAGE = 0.02  # the oracle and SynthNet together, per training image: 0.015 on 2 idle CPU cores, 0.04 busy


@dataclass
class Estimate:
    """Seconds the work will take, and what they are made of."""

    seconds: float
    parts: list[str]  # "10000 generated through G (850 img/s)", ...
    per_generated_s: float  # seconds each generated image costs (to say which --n fits)
    fixed_s: float  # seconds that do not depend on --n (real images, training the oracle)

    def seconds_for(self, n: int) -> float:
        return self.fixed_s + n * self.per_generated_s


def per_image_s(run: Callable[[torch.Tensor], object], images: torch.Tensor) -> float:
    """Seconds per image of `run` on a batch, after one warm-up call (first calls pay for allocation)."""
    run(images[:2])
    start = time.perf_counter()
    run(images)
    return (time.perf_counter() - start) / len(images)


def clock(seconds: float) -> str:
    """'1 h 20 min', '8 min', '40 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{max(1, round(seconds))} s"


def estimate(*, n: int, g_s: float, readers: dict[str, tuple[float, int]], train_images: int = 0) -> Estimate:
    """The estimate from measured per-image costs: G for the n generated images; each reader (an extractor or the
    oracle: seconds per image, real images it reads, 0 where their statistics are cached) for the generated and the
    real images; training the oracle and SynthNet on `train_images`."""
    parts = [f"{n} generated through G ({1 / g_s:.0f} img/s)"] if g_s > 0 else []
    fixed = train_images * TRAIN_S_PER_IMAGE
    per_gen = g_s
    for spec, (s, n_real) in readers.items():
        parts.append(f"{n} generated + {n_real} real through {spec} ({1 / s:.0f} img/s)" if s > 0 else spec)
        fixed += n_real * s
        per_gen += s
    if train_images:
        parts.append(f"training the oracle and SynthNet on {train_images} images (about "
                     f"{clock(train_images * TRAIN_S_PER_IMAGE)})")
    return Estimate(fixed + n * per_gen, parts, per_gen, fixed)


def warning(est: Estimate, n: int, device: str) -> str | None:
    """One line when the work would take longer than WARN_AFTER_S, with the --n that takes about 10 minutes."""
    if est.seconds <= WARN_AFTER_S:
        return None
    fits = int(max(0.0, WARN_AFTER_S - est.fixed_s) / est.per_generated_s) if est.per_generated_s > 0 else n
    hint = (f"; --n {max(fits // 100 * 100, 100)} takes about {clock(est.seconds_for(max(fits // 100 * 100, 100)))}"
            if fits < n else "")
    return (f"warning: this will take about {clock(est.seconds)} on {device} ({'; '.join(est.parts)}){hint}; "
            "a GPU (--device cuda) is much faster")
