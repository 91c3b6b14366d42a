"""Loader throughput: flowergan's shard stream vs torchvision ImageFolder and vs a plain webdataset pipeline.

All read the same photos (the flowers5-128 tar: 4,317 JPEGs at 128 px) and produce float batches [B, 3, 64, 64] in
[-1, 1] with random flips, using the same number of loader worker processes:

* ImageFolder: the usual recipe, Resize, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize in a DataLoader,
  reading the JPEG files;
* webdataset: the same shards through `wds.ResampledShards` + `wds.tarfile_to_samples` + `wds.shuffle` +
  `wds.batched`, decoded exactly as the stream decodes (flowergan.data.loader.decode + the same flip/convert), in a
  DataLoader: what the stream would be with webdataset's tar reader and none of the Plan;
* flowergan stream, `data.cache = "none"` and `"memory"`.

Rounds alternate the loaders so background load hits them alike; medians are reported, and the ratios are the
median of the per-round ratios. Before that, two parts are timed alone in this process, also interleaved: tar
parsing (flowergan's tario vs `wds.tarfile_samples`, shards from the page cache) and PNG decoding (flowergan's
batch codec vs Pillow) -- the two places where flowergan keeps its own code instead of a library's.

    python benchmarks/loader.py [--workers 2] [--batch 64] [--batches 30] [--rounds 5] [--data PATH.tar]

Prints shard-writing throughput, the part timings, images/s per loader, `webdataset ratio=<stream / webdataset>`
and last `loader ratio=<stream / ImageFolder>`.
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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
    assert x.shape == (batch, 3, 64, 64) and x.dtype == torch.float32
    rate = n * batch / (time.perf_counter() - t0)
    del it  # shuts the worker processes down before the next loader starts
    return rate


class _DecodeAndFlip:
    """wds.batched's collation: the stream's decoder and its flip/convert (a class, so workers can pickle it)."""

    def __init__(self, hflip: float):
        self.hflip, self.count = hflip, itertools.count()

    def __call__(self, samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        from flowergan.data.loader.decode import decode_batch
        from flowergan.data.loader.transform import to_float

        x, labels, bad = decode_batch(samples, "png", 64)
        assert not bad
        return to_float(torch.from_numpy(x), seed=next(self.count), hflip=self.hflip, jitter=0.0), \
            torch.from_numpy(labels)


def _parts(urls: list[str], rounds: int) -> None:
    """Tar parsing and PNG decoding alone, per sample, in interleaved rounds."""
    import webdataset as wds
    from PIL import Image

    from flowergan.data.loader.tar_reader import iter_samples
    from flowergan.data.png import decode_png_batch

    def tario() -> int:
        n = 0
        for url in urls:
            with open(url, "rb") as f:
                n += sum(1 for _ in iter_samples(f))
        return n

    def webdataset() -> int:
        return sum(1 for _ in wds.tarfile_samples([{"url": u} for u in urls]))

    blobs = []
    for url in urls[:8]:
        with open(url, "rb") as f:
            blobs += [s["png"] for s in iter_samples(f)]
    blobs = blobs[:len(blobs) // 64 * 64]

    def codec() -> int:
        for i in range(0, len(blobs), 64):
            decode_png_batch(blobs[i:i + 64], 64, 64)
        return len(blobs)

    def pillow() -> int:
        for b in blobs:
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
        return len(blobs)

    for title, ours, theirs in (("tar parsing", ("tario", tario), ("wds.tarfile_samples", webdataset)),
                                ("PNG decoding", ("flowergan codec", codec), ("Pillow", pillow))):
        times: dict[str, list[float]] = {ours[0]: [], theirs[0]: []}
        for _ in range(rounds):
            for name, fn in (ours, theirs):
                t0 = time.perf_counter()
                n = fn()
                times[name].append((time.perf_counter() - t0) / n * 1e6)
        ratio = statistics.median(b / a for a, b in zip(times[ours[0]], times[theirs[0]]))
        print(f"{title}: {ours[0]} {statistics.median(times[ours[0]]):.1f} us/sample, {theirs[0]} "
              f"{statistics.median(times[theirs[0]]):.1f} us/sample ({ratio:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tar of class folders of images")
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes (every loader)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per round and loader")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found (pass --data a .tar of class folders)")

    import torchvision.transforms as T
    import webdataset as wds
    from torchvision.datasets import ImageFolder

    from flowergan.config import DataConfig
    from flowergan.data import build_stream
    from flowergan.data.ingest.archives import extract
    from flowergan.data.ingest.images import ImageOptions
    from flowergan.data.ingest.sharder import ShardOptions, shard_source

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
        urls = [str(tmp / "shards" / s["name"]) for s in m["shards"]]
        _parts(urls, args.rounds)

        tf_base = T.Compose([T.Resize(64), T.CenterCrop(64), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize([0.5] * 3, [0.5] * 3)])
        baseline_ds = ImageFolder(str(src), transform=tf_base)
        shuffle_buffer = DataConfig().shuffle_buffer

        def baseline():
            return torch.utils.data.DataLoader(baseline_ds, batch_size=args.batch, shuffle=True,
                                               num_workers=args.workers, drop_last=True, persistent_workers=False)

        def webdataset():
            pipeline = wds.DataPipeline(wds.ResampledShards(urls), wds.tarfile_to_samples(),
                                        wds.shuffle(shuffle_buffer, initial=shuffle_buffer),
                                        wds.batched(args.batch, collation_fn=_DecodeAndFlip(0.5), partial=False))
            return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=args.workers)

        def stream(cache: str):
            cfg = DataConfig(path=str(tmp / "shards"), workers=args.workers, hflip=0.5, cache=cache,
                             shuffle_buffer=shuffle_buffer)
            return build_stream(cfg, batch_size=args.batch, resolution=64, seed=0)

        loaders = {"torchvision ImageFolder": baseline, "webdataset tarfile_to_samples": webdataset,
                   "flowergan stream (cache=none)": lambda: stream("none"),
                   "flowergan stream (cache=memory)": lambda: stream("memory")}
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        for r in range(args.rounds):
            for name, make in loaders.items():
                rates[name].append(_rate(make(), args.batches, warmup=4, batch=args.batch))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        for name, values in rates.items():
            value = statistics.median(values)
            print(f"{name:34s} {value:8.0f} images/s  ({value / max(1, args.workers):.0f} per worker)")

        # Ratios within a round compare loaders under the same background load; report their median.
        def ratio(a: str, b: str) -> float:
            return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

        stream_none = "flowergan stream (cache=none)"
        print(f"memory cache ratio={ratio('flowergan stream (cache=memory)', 'torchvision ImageFolder'):.2f}")
        print(f"webdataset ratio={ratio(stream_none, 'webdataset tarfile_to_samples'):.2f}")
        print(f"loader ratio={ratio(stream_none, 'torchvision ImageFolder'):.2f}")


def _quiet_console():
    from rich.console import Console

    return Console(file=io.StringIO())


if __name__ == "__main__":
    main()
