"""Mode-collapse diagnostics as pure functions over images and feature arrays.

- MS-SSIM among random pairs of generated images next to the same figure for real images: a collapsed G
  makes look-alike samples, so its MS-SSIM rises above the real set's.
- NDB (Richardson & Weiss 2018): k-means bins fitted on real features; bins whose generated share differs
  significantly from the real share (two-proportion z-test), plus the JS divergence of the two histograms.
- Near-duplicate rate: generated samples whose nearest generated neighbour is closer than the 1st percentile
  of real-to-real nearest-neighbour distances.
- Memorisation: each sample's distance to its nearest training image, compared with how close real images
  are to each other; the closest pairs are returned for the report to show.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as torchmetrics uses them
MS_SSIM_KERNEL = 11


def ms_ssim_scales(size: int, kernel: int = MS_SSIM_KERNEL) -> int:
    """Most MS-SSIM scales (<= 5) an image of side `size` allows: 3 at 64 px, 4 at 128 px, 5 from 170 px."""
    s = len(MS_SSIM_BETAS)
    while s > 1 and size <= (kernel - 1) * max(1, s - 1) ** 2:  # torchmetrics' limit for each scale count
        s -= 1
    return s


def random_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """Up to `n_pairs` distinct unordered pairs (i != j) of range(n): all of them when there are fewer."""
    total = n * (n - 1) // 2
    if total <= n_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    rng = np.random.default_rng(seed)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n_pairs:
        a, b = rng.integers(0, n, size=2)
        if a != b:
            pairs.add((int(min(a, b)), int(max(a, b))))
    return np.array(sorted(pairs))


def mean_ms_ssim(images: torch.Tensor, n_pairs: int = 1000, seed: int = 0, batch: int = 128) -> tuple[float, int]:
    """Mean MS-SSIM over random pairs of uint8 images [N, 3, H, W], and the number of scales used.

    At 64 px the 5-scale MS-SSIM does not fit (the coarsest scale is smaller than the 11-px window), so the
    first scales are used with their weights renormalised to sum to 1: comparable between real and generated
    sets of one resolution, not across resolutions.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    n, _, h, w = images.shape
    if n < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 images")
    scales = ms_ssim_scales(min(h, w))
    raw = np.array(MS_SSIM_BETAS[:scales])
    betas = tuple(float(b) for b in raw / raw.sum())
    pairs = torch.from_numpy(random_pairs(n, n_pairs, seed))
    x = images.float()
    values = []
    for lo in range(0, len(pairs), batch):
        p = pairs[lo:lo + batch]
        v = ms_ssim(x[p[:, 0]], x[p[:, 1]], data_range=255.0, kernel_size=MS_SSIM_KERNEL, betas=betas,
                    reduction="none")
        values.append(v.reshape(-1).double())
    return float(torch.cat(values).mean()), scales


# ---------------------------------------------------------------- NDB
def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """k-means with k-means++ seeding (scipy's kmeans2); returns the [k, D] centroids (deterministic for a seed)."""
    from scipy.cluster.vq import kmeans2

    data = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(data):
        raise ValueError(f"k-means with k={k} needs at least k points, got {len(data)}")
    with warnings.catch_warnings():  # an emptied cluster keeps its centre (missing="warn"), as Lloyd's does
        warnings.simplefilter("ignore")
        centroids, _ = kmeans2(data, k, iter=iters, minit="++", missing="warn", seed=np.random.default_rng(seed))
    return centroids


def assign_bins(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row."""
    return torch.cdist(torch.as_tensor(np.asarray(x), dtype=torch.float64),
                       torch.as_tensor(centroids, dtype=torch.float64)).argmin(dim=1).numpy()


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def ndb(real: np.ndarray, fake: np.ndarray, k: int = 100, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Number of statistically Different Bins (and NDB/K) plus the JS divergence of the bin histograms.

    K is capped at N_real / 2 so every bin can hold real samples; the K used is returned.
    """
    from scipy.stats import norm

    k = max(2, min(k, len(real) // 2))
    centroids = kmeans(real, k, seed=seed)
    n_r, n_f = len(real), len(fake)
    c_r = np.bincount(assign_bins(real, centroids), minlength=k).astype(np.float64)
    c_f = np.bincount(assign_bins(fake, centroids), minlength=k).astype(np.float64)
    p_r, p_f = c_r / n_r, c_f / n_f
    pooled = (c_r + c_f) / (n_r + n_f)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_r + 1 / n_f))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (p_f - p_r) / se, 0.0)
    different = np.abs(z) > norm.ppf(1 - alpha / 2)
    return {"ndb": float(different.sum()), "ndb_over_k": float(different.mean()), "k": float(k),
            "js": js_divergence(c_r + 1e-12, c_f + 1e-12)}


# ---------------------------------------------------------------- neighbours
def _nn(a: torch.Tensor, b: torch.Tensor, exclude_self: bool, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance and index of each row of a's nearest row of b (skipping the same index when a is b)."""
    dists, idx = [], []
    for lo in range(0, len(a), chunk):
        d = torch.cdist(a[lo:lo + chunk], b)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + lo] = math.inf
        v, i = d.min(dim=1)
        dists.append(v)
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def near_duplicate_rate(real: np.ndarray, fake: np.ndarray, percentile: float = 1.0) -> dict[str, float]:
    """Share of generated samples with a generated neighbour closer than real images' 1st-percentile NN distance."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if len(r) < 2 or len(f) < 2:
        raise ValueError("near-duplicate rate needs at least 2 real and 2 generated samples")
    threshold = float(np.percentile(_nn(r, r, exclude_self=True)[0].numpy(), percentile))
    d_ff = _nn(f, f, exclude_self=True)[0]
    return {"near_dup_rate": float((d_ff < threshold).double().mean()), "threshold": threshold}


def memorisation(real: np.ndarray, fake: np.ndarray, n_pairs: int = 8) -> dict[str, object]:
    """Nearest-training-image distances of generated samples, against real images' own NN distances.

    `nn_ratio` = median(generated -> train) / median(train -> other train): near or above 1 is healthy,
    far below 1 means samples sit closer to training images than those images sit to each other (copying).
    `closest` holds (generated index, training index, distance) of the closest pairs, for the report.
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    d_fr, i_fr = _nn(f, r, exclude_self=False)
    d_rr = _nn(r, r, exclude_self=True)[0]
    order = torch.argsort(d_fr)[:n_pairs]
    return {
        "nn_dist_median": float(d_fr.median()),
        "real_nn_dist_median": float(d_rr.median()),
        "nn_ratio": float(d_fr.median() / d_rr.median()) if float(d_rr.median()) > 0 else math.inf,
        "closest": [(int(j), int(i_fr[j]), float(d_fr[j])) for j in order],
    }
