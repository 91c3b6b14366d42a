"""Calibrate a Fréchet distance before trusting it: what it scores for real vs real, blurred, and a lattice.

The real photos are shuffled once (seed 0) and split into two halves A and B. Each row is FD(A, B'), with B' the
half B as it is, blurred (Gaussian, sigma 1 and 2 px) or with a 2-pixel checkerboard of amplitude a/255 added
(+a and -a on alternate pixels: the lattice texture that transposed convolutions leave in DCGAN samples). A metric
fit to judge generated photos must score every distortion well above real vs real, and the checkerboard at a
small amplitude already. The last column is each FD divided by the real-vs-real FD of the same extractor.

    python benchmarks/fd_calibration.py                                       # flowers5 at 64 px, effnet-lite2
    python benchmarks/fd_calibration.py --features effnet-lite2,synth --n 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def checkerboard(x: torch.Tensor, amplitude: float) -> torch.Tensor:
    """uint8 images plus +a / -a on alternate pixels (period 2 in x and y), rounded and clipped to uint8."""
    H, W = x.shape[-2:]
    sign = (torch.arange(H)[:, None] + torch.arange(W)[None, :]) % 2 * 2 - 1
    return (x.float() + amplitude * sign).round().clamp(0, 255).to(torch.uint8)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 images (kernel 2 * ceil(3 sigma) + 1), back to uint8."""
    k = 2 * int(3 * sigma + 0.999) + 1
    return TF.gaussian_blur(x.float(), [k, k], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)


def distortions(amplitudes: list[float]) -> dict[str, object]:
    """Row name -> function of the B half; the first row is B unchanged (real vs real)."""
    rows: dict[str, object] = {"real vs real": lambda x: x, "blur sigma 1 px": lambda x: blur(x, 1.0),
                               "blur sigma 2 px": lambda x: blur(x, 2.0)}
    for a in amplitudes:
        rows[f"checkerboard {a:g}/255"] = lambda x, a=a: checkerboard(x, a)
    return rows


def features(extractor, x: torch.Tensor, batch: int):
    """The extractor's features [N, D] of uint8 images."""
    from flowergan_eval import features as FT

    return FT.extract(extractor, x.split(batch), len(x)).pool


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "flowers5-128.tar"),
                    help="real photos: shards, or a tar/folder sharded at 64 px once")
    ap.add_argument("--features", default="effnet-lite2", help="comma-separated extractors (effnet-lite2, synth, "
                    "inception, a file)")
    ap.add_argument("--n", type=int, default=0, help="images per half (0 = half the set)")
    ap.add_argument("--amplitudes", default="2,4,8,16", help="checkerboard amplitudes in 1/255")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"), help="where the 64 px shards are cached")
    args = ap.parse_args(argv)

    from flowergan_eval.extractors import load_extractor
    from flowergan_eval.metrics import fid_from_features
    from flowergan_eval.real import load_real, open_real
    from quality import real_shards

    real = open_real(real_shards(args.data, Path(args.out)))
    images, _ = load_real(real)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    half = args.n or len(images) // 2
    A, B = images[order[:half]], images[order[half:2 * half]]
    rows = distortions([float(a) for a in args.amplitudes.split(",") if a])
    print(f"data {real.path} ({len(images)} images at {real.resolution} px), halves of {half}")
    for spec in args.features.split(","):
        extractor = load_extractor(spec, real=real, device="cpu")
        fa = features(extractor, A, args.batch)
        base = None
        for name, fn in rows.items():
            t0 = time.perf_counter()
            value = fid_from_features(fa, features(extractor, fn(B), args.batch))  # type: ignore[operator]
            base = base if base is not None else value
            print(json.dumps({"features": extractor.name, "row": name, "fd": round(value, 3),
                              "x_real": round(value / base, 2), "s": round(time.perf_counter() - t0, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
