"""Raw WebDataset samples -> uint8 images and labels: the one decode path of training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flowergan.data.png import decode_png_batch


def decode_batch(samples: list[dict[str, Any]], ext: str,
                 resolution: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(uint8 [B, R, R, 3], int64 labels [B], [(index, reason)] of the samples that failed).

    flowergan's own PNGs decode as one batch (png.py); anything else goes through Pillow one by one. A failed
    sample leaves zeros in its row: training stops on it, evaluation drops it.
    """
    from flowergan.data.ingest.images import decode

    r = resolution
    blobs = [s.get(ext, b"") for s in samples]
    slow: Sequence[int]
    if ext == "png":
        x, slow = decode_png_batch(blobs, r, r)
    else:
        x, slow = np.zeros((len(blobs), r, r, 3), np.uint8), range(len(blobs))
    labels = np.zeros(len(samples), np.int64)
    bad: list[tuple[int, str]] = []
    for k in slow:
        if ext not in samples[k]:
            bad.append((k, f"has no .{ext} image"))
            continue
        try:
            img = decode(blobs[k])
        except Exception as e:  # anything Pillow raises on a broken file
            bad.append((k, f"does not decode ({e})"))
            continue
        if img.shape != (r, r, 3):
            bad.append((k, f"is {img.shape[1]}x{img.shape[0]}, the manifest says {r}x{r}"))
            continue
        x[k] = img
    failed = {k for k, _ in bad}
    for k, s in enumerate(samples):
        if k in failed:
            continue
        try:
            labels[k] = int(s.get("cls", b"0"))
        except ValueError:
            bad.append((k, f"has a bad .cls label {s['cls'][:20]!r}"))
    return x, labels, sorted(bad)
