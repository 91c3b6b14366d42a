"""FID feature extraction: flowergan-eval's extractor against torch-fidelity's own, same images, same run.

Both run torch-fidelity's TF-Inception port (FeatureExtractorInceptionV3) on the same uint8 batches and return
the same outputs (pool3 2048-d + unbiased logits). Ours folds each BatchNorm into its convolution and stores
the weights channels-last; the baseline is the module exactly as torch_fidelity.calculate_metrics builds and
calls it (torch.no_grad, NCHW, BN separate). Rounds are interleaved (A, B, B, A, ...) and the per-round ratios'
median is reported, because a shared machine drifts.

Then the wall time of a 10k-sample FID on this device, built from measured parts: G's sampling rate, our
extraction rate, and the FID arithmetic on 10 000 x 2048 features (run for real). Extrapolated figures say so.

    python benchmarks/features.py                  # CPU, random weights of the same network (no download here)
    python benchmarks/features.py --device cuda --batch 200 --rounds 6
    python benchmarks/features.py --inception-weights weights-inception-2015-12-05-6726825d.pth

Final line: `features ratio=<ours img/s / torch-fidelity img/s>` (target >= 1.0).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers5-128.tar"


def load_flowers(n: int, size: int) -> torch.Tensor:
    """n real flower photos (uint8 [n, 3, size, size]) from the shared test tar, or smooth noise without it."""
    if FLOWERS.is_file():
        out = []
        with tarfile.open(FLOWERS) as tar:
            members = [m for m in tar.getmembers() if m.name.lower().endswith(".jpg")]
            step = max(1, len(members) // n)
            for m in members[::step][:n]:
                img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB").resize((size, size))
                out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        return torch.stack(out)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bicubic")
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, batches, device) -> float:
    """Seconds for one pass over the batches (the device is idle before and after)."""
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=32, help="images per round and side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="image side before the resize to 299 (G's resolution)")
    ap.add_argument("--inception-weights", default=None, help="default: random weights of the same network")
    args = ap.parse_args()

    from flowergan_eval import features as FT
    from flowergan_eval import metrics as M
    from flowergan_eval import weights as W
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from flowergan.models import Generator

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    weights = args.inception_weights or str(FT.random_inception_weights(tmp / "random.pth", seed=0))
    label = "official TF-Inception" if args.inception_weights and W.is_official(weights) else (
        "given weights" if args.inception_weights else "random weights (same network and cost as the real ones)")
    ours = FT.InceptionExtractor(W.load_state_dict(weights), device=device, weights_sha256=W.sha256_file(weights))
    baseline = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=weights).to(device).eval()
    baseline.requires_grad_(False)

    images = load_flowers(args.n, args.size)
    batches = [b.to(device) for b in images.split(args.batch)]

    def run_theirs(b):
        with torch.no_grad():  # as torch-fidelity's get_featuresdict_from_dataset calls it
            return baseline(b)

    # Same numbers first (a faster extractor that computes something else would be worthless).
    a, b = ours(batches[0]), run_theirs(batches[0])
    rel = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))
    timed(ours, batches[:1], device)  # warm-up: allocator, oneDNN/cuDNN kernel choice
    timed(run_theirs, batches[:1], device)

    ratios, ours_rates, theirs_rates = [], [], []
    for r in range(args.rounds):
        order = [("ours", ours), ("theirs", run_theirs)]
        if r % 2:
            order.reverse()
        seconds = {name: timed(fn, batches, device) for name, fn in order}
        ours_rates.append(args.n / seconds["ours"])
        theirs_rates.append(args.n / seconds["theirs"])
        ratios.append(seconds["theirs"] / seconds["ours"])
        print(f"round {r + 1}: ours {ours_rates[-1]:.2f} img/s, torch-fidelity {theirs_rates[-1]:.2f} img/s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    ours_rate, ratio = statistics.median(ours_rates), statistics.median(ratios)

    # A 10k-sample FID from parts: G's sampling, our extraction, and the FID arithmetic (run for real).
    G = Generator(nz=100, ngf=64, resolution=args.size).to(device).eval()
    z = FT.latents(256, 100, seed=0)
    list(FT.generate(G, z[:64], batch=64, device=device))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    list(FT.generate(G, z, batch=64, device=device))
    sync(device)
    g_rate = len(z) / (time.perf_counter() - t0)
    feats = np.random.default_rng(0).standard_normal((10_000, 2048)).astype(np.float32)
    ref = np.random.default_rng(1).standard_normal((4317, 2048)).astype(np.float32)
    t0 = time.perf_counter()
    M.fid(*M.feature_stats(feats), *M.feature_stats(ref))
    fid_math = time.perf_counter() - t0
    total = 10_000 / g_rate + 10_000 / ours_rate + fid_math
    ref_once = 4317 / ours_rate

    print(f"device {device} ({torch.get_num_threads()} threads), {label}, {args.size}px -> 299, batch {args.batch}, "
          f"{args.n} images x {args.rounds} rounds per side")
    print(f"outputs agree: max relative difference {rel:.2e}")
    print(f"ours           {ours_rate:8.2f} img/s (median of rounds)")
    print(f"torch-fidelity {statistics.median(theirs_rates):8.2f} img/s (median of rounds)")
    print(f"fid10k on {device}: {total / 60:.1f} min EXTRAPOLATED from measured parts: G {g_rate:.0f} img/s, "
          f"Inception {ours_rate:.2f} img/s, FID maths on 10000x2048 features {fid_math:.1f} s (measured); "
          f"plus once per data set, reference statistics of 4317 flowers: {ref_once / 60:.1f} min (then cached)")
    print(f"features ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
