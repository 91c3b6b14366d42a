"""Loader throughput: flowergan's shard stream vs torchvision ImageFolder + PIL transforms, side by side in one run.

Both read the same source photos (the flowers5-128 tar: 4,317 JPEGs at 128 px) and produce float batches
[B, 3, 64, 64] in [-1, 1] with random flips, using the same number of loader worker processes. The baseline is
the usual recipe: ImageFolder + Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize in a DataLoader.
Rounds alternate baseline / stream so background load hits both alike; medians are reported, and the ratios
are the median of the per-round ratios.

    python benchmarks/loader.py [--workers 2] [--batch 64] [--batches 30] [--rounds 5] [--data PATH.tar]

Prints shard-writing throughput first, then images/s per loader and a final `loader ratio=<stream / baseline>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flowers5-128.tar"


def _rate(batches, n: int, warmup: int, batch: int) -> float:
    """Images/s over n batches after `warmup` batches (worker start-up excluded for every loader)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        x, _y = next(it)
    assert x.shape[-1] == 64 and x.dtype == torch.float32
    rate = n * batch / (time.perf_counter() - t0)
    del it  # shuts the worker processes down before the next loader starts
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tar of class folders of images")
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes (both loaders)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per round and loader")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found (pass --data a .tar of class folders)")

    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from flowergan.config import DataConfig
    from flowergan.data import build_stream
    from flowergan.data.archives import extract
    from flowergan.data.build import ShardOptions, shard_source
    from flowergan.data.images import ImageOptions

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="flowergan-bench-") as tmp:
        tmp = Path(tmp)
        src = next(p for p in extract(args.data, tmp / "src").root.iterdir() if p.is_dir())

        # Shard writing (decode JPEG, crop, resize, PNG encode, tar, sha256): a one-off cost per data set.
        t0 = time.perf_counter()
        m = shard_source(src, tmp / "shards", ShardOptions(image=ImageOptions(size=64), workers=args.workers),
                         progress=False, console=_quiet_console())
        dt = time.perf_counter() - t0
        n_files = m["num_samples"] + len(m["duplicates"]) + len(m["rejected"])
        print(f"shard writing: {n_files} source images -> {m['num_samples']} kept in {dt:.1f} s = "
              f"{n_files / dt:.0f} images/s with {args.workers} workers "
              f"({sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB in {len(m['shards'])} shards)")

        tf_base = T.Compose([T.Resize(64), T.CenterCrop(64), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize([0.5] * 3, [0.5] * 3)])
        baseline_ds = ImageFolder(str(src), transform=tf_base)

        def baseline():
            return torch.utils.data.DataLoader(baseline_ds, batch_size=args.batch, shuffle=True,
                                               num_workers=args.workers, drop_last=True, persistent_workers=False)

        def stream(cache: str):
            cfg = DataConfig(path=str(tmp / "shards"), workers=args.workers, hflip=0.5, cache=cache)
            return build_stream(cfg, batch_size=args.batch, resolution=64, seed=0)

        loaders = {"torchvision ImageFolder": baseline, "flowergan stream (cache=none)": lambda: stream("none"),
                   "flowergan stream (cache=memory)": lambda: stream("memory")}
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        for r in range(args.rounds):
            for name, make in loaders.items():
                rates[name].append(_rate(make(), args.batches, warmup=4, batch=args.batch))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        for name, value in med.items():
            print(f"{name:34s} {value:8.0f} images/s  ({value / max(1, args.workers):.0f} per worker)")
        # Ratios within a round compare loaders under the same background load; report their median.
        base = rates["torchvision ImageFolder"]
        ratio = {k: statistics.median(a / b for a, b in zip(v, base)) for k, v in rates.items()}
        print(f"memory cache ratio={ratio['flowergan stream (cache=memory)']:.2f}")
        print(f"loader ratio={ratio['flowergan stream (cache=none)']:.2f}")


def _quiet_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


if __name__ == "__main__":
    main()
