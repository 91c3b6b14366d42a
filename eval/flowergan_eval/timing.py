"""What an evaluation will cost on this machine, measured before it starts (the arithmetic is estimate.py): one small
batch through G and through every network that will read images, scaled to the generated and real images each one
reads. Every command that pushes images through a network says so in one line when the whole would be long."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch

from flowergan_eval import estimate as E
from flowergan_eval import features as FT
from flowergan_eval.api import Evaluation


def _probe_images(ev: Evaluation) -> tuple[torch.Tensor, float]:
    """E.PROBE images to time the readers with, and G's seconds per image (0 without a generator: real images)."""
    if ev.ckpt is None:
        from flowergan_eval.real import load_real

        return load_real(ev.require_real(), E.PROBE)[0], 0.0
    G = ev.generator()
    z = FT.latents(E.PROBE, ev.nz, ev.opts.seed + 1)

    def run_g(zz: torch.Tensor) -> list[torch.Tensor]:
        return [x.cpu() for x in FT.generate(G, zz, batch=len(zz), device=ev.device)]

    return torch.cat(run_g(z)), E.per_image_s(run_g, z)


def measure(ev: Evaluation, specs: Iterable[str], *, modes: bool = False, oracle_dir: str | None = None,
            n: int | None = None) -> E.Estimate:
    """The cost of n generated images (default --n) through G and the extractors `specs` (with the real images whose
    statistics are not cached yet), plus the mode oracle when `modes`, plus training SynthNet and the oracle on the
    shards when they are not cached."""
    from flowergan_eval import oracle as O
    from flowergan_eval import synthnet as SN
    from flowergan_eval.real import count
    from flowergan_eval.stats import is_cached

    real = ev.real
    images, g_s = _probe_images(ev)
    readers: dict[str, tuple[float, int]] = {}
    n_ref = count(real, ev.opts.ref_n) if real is not None else 0
    train = 0
    for spec in sorted(set(specs) - {"", "oracle"}):
        extractor: Any
        if spec == "synth" and real is not None and not (O.default_dir(real) / SN.INFO).is_file():
            # Not trained yet: an untrained SynthNet is the same network at the same cost.
            extractor = SN.SynthExtractor(SN.SynthNet(real.num_classes), {}, device=ev.device)
            train, n_real = real.num_samples, n_ref
        else:
            extractor = ev.extractor_for(spec)
            n_real = 0 if real is None or is_cached(real, extractor, ev.opts.ref_n) else n_ref
        readers[spec] = (E.per_image_s(extractor, images), n_real)
    if modes and real is not None:
        readers["the mode oracle"] = (E.per_image_s(O.describe, images), min(ev.opts.n, n_ref))
        if not oracle_dir and not (O.default_dir(real) / "oracle.json").is_file():
            train = real.num_samples
    n = ev.opts.n if n is None else n
    return E.estimate(n=n if ev.ckpt is not None else 0, g_s=g_s, readers=readers, train_images=train)


def warn_if_long(ev: Evaluation, specs: Iterable[str], **kwargs: Any) -> E.Estimate:
    """Measure, and say on stderr before the work starts when it would take longer than E.WARN_AFTER_S."""
    est = measure(ev, specs, **kwargs)
    line = E.warning(est, ev.opts.n if ev.ckpt is not None else 0, str(ev.device))  # stats: no --n to suggest
    if line:
        print(line, file=sys.stderr)
    return est
