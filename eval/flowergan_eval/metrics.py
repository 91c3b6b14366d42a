"""Sample-quality metrics as pure functions over feature arrays, plus a thin registry.

Nothing here runs a network: `features.py` turns images into arrays, these functions turn arrays into
numbers. A metric's reported name carries its sample count (`fid10k`, `kid1k`), because FID and IS are
biased by N and numbers at different N must not be compared. Each registry entry says whether lower is
better, which extractor it reads by default (`inception`, `synth`, or the mode `oracle`) and which of its numbers
picks the best checkpoint; the CLI and the in-training evaluation both go through it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowergan.catalogue import METRICS, PRDC_K, MetricFacts

# torch-fidelity's defaults, kept so our numbers equal its own `calculate_metrics` on the same inputs.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
SHUFFLE_SEED = 2020


# ---------------------------------------------------------------- FID
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased like np.cov) of [N, D] features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape [N, D], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; negative round-off eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians: |mu1-mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    # tr((S1 S2)^½) = tr((S1^½ S2 S1^½)^½). The right-hand matrix is symmetric PSD, so its eigenvalues are
    # real and >= 0 up to round-off: no complex sqrtm, and near-singular covariances (N < D) stay finite.
    s1 = _psd_sqrt(sigma1)
    m = s1 @ sigma2 @ s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    # Eigenvalues at round-off level are zeros of a rank-deficient product (N < D); their square roots
    # (~1e-7 each) would otherwise add up to a visible error over thousands of dimensions.
    eig[eig < eig.max(initial=0.0) * len(eig) * np.finfo(np.float64).eps] = 0.0
    tr_covmean = np.sqrt(eig).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID of two feature sets; exact, and far cheaper than the D x D route when a set has fewer than D rows.

    With centred features A [n1, D] and B [n2, D], S1 S2 = A^T A B^T B / c has the same non-zero eigenvalues
    as (B A^T)(B A^T)^T / c, so tr((S1 S2)^½) is the sum of the singular values of the n2 x n1 matrix B A^T
    divided by sqrt(c), c = (n1 - 1)(n2 - 1). No square root of a round-off eigenvalue is ever taken.
    """
    a = np.asarray(f1, dtype=np.float64)
    b = np.asarray(f2, dtype=np.float64)
    n1, n2, d = len(a), len(b), a.shape[1]
    if min(n1, n2) >= d:
        return fid(*feature_stats(a), *feature_stats(b))
    if n1 < 2 or n2 < 2 or b.shape[1] != d:
        raise ValueError(f"need two feature sets [N >= 2, D] of one width, got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    a, b = a - mu1, b - mu2
    tr_covmean = np.linalg.svd(b @ a.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1) - 2 * tr_covmean)


# ---------------------------------------------------------------- KID
_FULL_KERNEL_MAX = 3 * 4096**2  # kernel entries (float64) worth precomputing once instead of per subset


def kid(f1: np.ndarray, f2: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = SHUFFLE_SEED, device: str | torch.device | None = None) -> tuple[float, float, int]:
    """Kernel Inception Distance: mean and std of unbiased MMD² over random subsets, and the subset size used.

    Cubic polynomial kernel k(a, b) = (a·b / D + 1)³ (Bińkowski et al. 2018). The subset size is capped at
    the smaller sample, so KID works with a few hundred images. Computed in float64 on `device`.
    """
    x = torch.as_tensor(np.asarray(f1), dtype=torch.float64, device=device)
    y = torch.as_tensor(np.asarray(f2), dtype=torch.float64, device=device)
    n1, n2, d = len(x), len(y), x.shape[1]
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {n1} and {n2}")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1) ** 3

    # Small sets: every kernel entry once, then subsets are index lookups (100x fewer matmuls).
    full = n1 * n1 + n2 * n2 + n1 * n2 <= _FULL_KERNEL_MAX
    if full:
        k_xx_all, k_yy_all, k_xy_all = kernel(x, x), kernel(y, y), kernel(x, y)
    rng = np.random.RandomState(seed)
    mmds = torch.zeros(subsets, dtype=torch.float64, device=x.device)
    for i in range(subsets):
        # Same draw order as torch-fidelity (first sample, then second), so equal seeds give equal subsets.
        a = torch.from_numpy(rng.choice(n1, m, replace=False)).to(x.device)
        b = torch.from_numpy(rng.choice(n2, m, replace=False)).to(x.device)
        if full:
            k_xx, k_yy, k_xy = k_xx_all[a][:, a], k_yy_all[b][:, b], k_xy_all[a][:, b]
        else:
            k_xx, k_yy, k_xy = kernel(x[a], x[a]), kernel(y[b], y[b]), kernel(x[a], y[b])
        # Off-diagonal sums only: dropping k(a, a) is what makes the estimate unbiased.
        off = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
        mmds[i] = off / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)
    values = mmds.cpu().numpy()
    return float(values.mean()), float(values.std()), m


# ---------------------------------------------------------------- IS
def inception_score(logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS,
                    seed: int | None = SHUFFLE_SEED) -> tuple[float, float]:
    """Inception Score exp(E[KL(p(y|x) || p(y))]) from classifier logits: mean and std over `splits`."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = t.shape[0]
    if n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
    if seed is not None:  # shuffled once so that splits are not ordered by generation batch
        t = t[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    log_p = t.log_softmax(dim=1)
    p = log_p.exp()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        # log of the split's marginal p(y), taken in log space: q.log() of an underflowed class would be
        # -inf and turn 0 * inf into NaN (what torch-fidelity returns for very confident logits).
        log_q = torch.logsumexp(log_p[lo:hi], dim=0, keepdim=True) - math.log(hi - lo)
        kl = (p[lo:hi] * (log_p[lo:hi] - log_q)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------- PRDC
def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (the row itself is at distance 0)."""
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(chunk)])


def prdc(real: np.ndarray, fake: np.ndarray, k: int = PRDC_K, chunk: int = 1024) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020) with k-NN balls."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} samples on each side, got {len(r)} and {len(f)}")
    r_radius = _kth_nn_radius(r, k, chunk)  # [N_real]
    f_radius = _kth_nn_radius(f, k, chunk)  # [N_fake]
    in_real_balls = torch.zeros(len(f), dtype=torch.float64)  # per fake: how many real balls hold it
    for lo in range(0, len(f), chunk):
        d = torch.cdist(f[lo:lo + chunk], r)  # [c, N_real]
        in_real_balls[lo:lo + chunk] = (d <= r_radius[None]).sum(dim=1).double()
    recall_hits = torch.zeros(len(r), dtype=torch.bool)
    covered = torch.zeros(len(r), dtype=torch.bool)
    for lo in range(0, len(r), chunk):
        d = torch.cdist(r[lo:lo + chunk], f)  # [c, N_fake]
        recall_hits[lo:lo + chunk] = (d <= f_radius[None]).any(dim=1)
        covered[lo:lo + chunk] = d.min(dim=1).values <= r_radius[lo:lo + chunk]
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(recall_hits.double().mean()),
        "density": float(in_real_balls.sum() / (k * len(f))),
        "coverage": float(covered.double().mean()),
    }


# ---------------------------------------------------------------- modes (SynthFlowers)
def default_min_count(n: int, k: int) -> int:
    """A mode counts as covered with >= 10 % of its uniform share of samples (and at least 2)."""
    return max(2, math.ceil(0.1 * n / k))


def mode_stats(pred: np.ndarray, k: int, min_count: int) -> dict[str, Any]:
    """Modes covered (>= min_count samples) and KL(generated mode distribution || uniform) in nats."""
    counts = np.bincount(np.asarray(pred, dtype=np.int64), minlength=k)[:k]
    p = counts / max(1, counts.sum())
    nz = p > 0
    return {"covered": int((counts >= min_count).sum()), "num_modes": k,
            "kl_uniform": float((p[nz] * np.log(p[nz] * k)).sum()), "counts": counts.tolist(),
            "min_count": min_count}


# ---------------------------------------------------------------- per class (a conditional G)
def per_class(fn: Callable[[np.ndarray, np.ndarray], float], gen: np.ndarray, gen_labels: np.ndarray,
              real: np.ndarray, real_labels: np.ndarray, k: int) -> np.ndarray:
    """fn(generated features of class c, real features of class c) for every class c; NaN where a side has fewer
    than 2 samples of c (a distance of one sample to a set means nothing)."""
    gl, rl = np.asarray(gen_labels), np.asarray(real_labels)
    out = np.full(k, np.nan)
    for c in range(k):
        g, r = gen[gl == c], real[rl == c]
        if len(g) >= 2 and len(r) >= 2:
            out[c] = fn(g, r)
    return out


def class_accuracy(pred: np.ndarray, asked: np.ndarray, k: int, min_count: int) -> dict[str, Any]:
    """How often the oracle reads a sample asked for as class c as c: overall, per class, and the classes read
    right at least `min_count` times (covered)."""
    pred, asked = np.asarray(pred), np.asarray(asked)
    right = pred == asked
    hits = np.bincount(asked[right], minlength=k)[:k]
    asked_n = np.bincount(asked, minlength=k)[:k]
    per = np.where(asked_n > 0, hits / np.maximum(asked_n, 1), np.nan)
    return {"accuracy": float(right.mean()) if len(right) else float("nan"), "per_class": per,
            "covered": int((hits >= min_count).sum()), "num_classes": k}


def class_key(name: str, c: int) -> str:
    """A class's sub-result name: its manifest name with anything but letters, digits and _ made _ (else c<i>)."""
    key = re.sub(r"\W", "_", name).strip("_")
    return key or f"c{c}"


def _by_class(values: np.ndarray, classes: list[str] | None) -> dict[str, float]:
    names = classes if classes and len(classes) == len(values) else [f"c{c}" for c in range(len(values))]
    return {f"/{class_key(n, c)}": float(v) for c, (n, v) in enumerate(zip(names, values))}


def _labels(gen: dict, ref: dict | None, base: str) -> tuple[np.ndarray, np.ndarray]:
    """(the classes the generated images were asked for, the real images' classes)."""
    if gen.get("labels") is None:
        raise ValueError(f"{base} scores a class-conditional generator, class by class; this one is unconditional")
    if ref is None or ref.get("labels") is None:
        raise ValueError(f"{base} needs the real images' classes beside their features")
    return np.asarray(gen["labels"]), np.asarray(ref["labels"])


def _mean_of(values: np.ndarray, base: str) -> float:
    if np.isnan(values).all():
        raise ValueError(f"{base}: no class has 2 or more samples on both sides")
    return float(np.nanmean(values))


def _intra_fd_entry(gen: dict, ref: dict, classes: list[str] | None = None, **_: object) -> dict[str, float]:
    gl, rl = _labels(gen, ref, "intra_fd")
    k = len(classes) if classes else int(max(gl.max(), rl.max())) + 1
    values = per_class(fid_from_features, gen["pool"], gl, ref["pool"], rl, k)
    return {"/mean": _mean_of(values, "intra_fd"), **_by_class(values, classes)}


def _intra_kid_entry(gen: dict, ref: dict, classes: list[str] | None = None, seed: int = SHUFFLE_SEED,
                     device: str | torch.device | None = None, **_: object) -> dict[str, float]:
    gl, rl = _labels(gen, ref, "intra_kid")
    k = len(classes) if classes else int(max(gl.max(), rl.max())) + 1
    values = per_class(lambda g, r: kid(g, r, seed=seed, device=device)[0], gen["pool"], gl, ref["pool"], rl, k)
    return {"/mean": _mean_of(values, "intra_kid"), **_by_class(values, classes)}


def _class_acc_entry(gen: dict, ref: dict | None = None, min_count: int = 0, classes: list[str] | None = None,
                     **_: object) -> dict[str, float]:
    if gen.get("labels") is None:
        raise ValueError("class_acc scores a class-conditional generator; this one is unconditional")
    asked = np.asarray(gen["labels"])
    k = int(gen["num_modes"])
    s = class_accuracy(gen["modes"], asked, k, min_count or default_min_count(len(asked), k))
    return {"": s["accuracy"], "/covered": float(s["covered"]), "/of": float(k), **_by_class(s["per_class"], classes)}


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    """One registered metric: its facts (flowergan.catalogue) and how to compute it from arrays."""

    facts: MetricFacts
    compute: Callable[..., dict[str, float]]

    name = property(lambda self: self.facts.name)
    doc = property(lambda self: self.facts.doc)
    lower_is_better = property(lambda self: self.facts.lower_is_better)
    needs_real = property(lambda self: self.facts.needs_real)
    features = property(lambda self: self.facts.features)  # inception, synth, effnet-lite2, or oracle
    headline = property(lambda self: self.facts.headline)  # the sub-result that picks the best checkpoint


def _fid_entry(gen: dict, ref: dict, **_: object) -> dict[str, float]:
    if "pool" in ref and min(len(gen["pool"]), len(ref["pool"])) < gen["pool"].shape[1]:
        return {"": fid_from_features(gen["pool"], ref["pool"])}  # same number, much less work
    mu, sigma = feature_stats(gen["pool"])
    return {"": fid(mu, sigma, ref["mu"], ref["sigma"])}


def _kid_entry(gen: dict, ref: dict, seed: int = SHUFFLE_SEED, device: str | torch.device | None = None,
               **_: object) -> dict[str, float]:
    mean, std, m = kid(gen["pool"], ref["pool"], seed=seed, device=device)
    return {"": mean, "/std": std, "/subset_size": float(m)}


def _is_entry(gen: dict, ref: dict | None = None, seed: int = SHUFFLE_SEED, **_: object) -> dict[str, float]:
    mean, std = inception_score(gen["logits"], seed=seed)
    return {"": mean, "/std": std}


def _prdc_entry(gen: dict, ref: dict, **_: object) -> dict[str, float]:
    return {f"/{k}": v for k, v in prdc(ref["pool"], gen["pool"], k=PRDC_K).items()}


def _modes_entry(gen: dict, ref: dict | None = None, min_count: int = 0, **_: object) -> dict[str, float]:
    pred, k = gen["modes"], int(gen["num_modes"])
    s = mode_stats(pred, k, min_count or default_min_count(len(pred), k))
    return {"/covered": float(s["covered"]), "/of": float(k), "/kl_uniform": s["kl_uniform"]}


def _modes_kl_entry(gen: dict, ref: dict | None = None, **kwargs: Any) -> dict[str, float]:
    s = _modes_entry(gen, ref, **kwargs)
    return {"": s["/kl_uniform"], "/covered": s["/covered"], "/of": s["/of"]}


# The compute function of each metric in flowergan.catalogue (which holds everything else about it).
COMPUTE: dict[str, Callable[..., dict[str, float]]] = {
    "fid": _fid_entry, "kid": _kid_entry, "is": _is_entry, "prdc": _prdc_entry, "synth_fd": _fid_entry,
    "effnet_fd": _fid_entry, "modes": _modes_entry, "modes_kl": _modes_kl_entry, "intra_fd": _intra_fd_entry,
    "intra_kid": _intra_kid_entry, "class_acc": _class_acc_entry,
}
REGISTRY: dict[str, Metric] = {name: Metric(facts, COMPUTE[name]) for name, facts in METRICS.items()}


def count_suffix(n: int) -> str:
    """The sample count as metric names carry it: 10000 -> '10k', 500 -> '500'."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def metric_name(base: str, n: int) -> str:
    """Name with its sample count: ('fid', 10000) -> 'fid10k', ('kid', 500) -> 'kid500'."""
    if base not in REGISTRY:
        raise KeyError(f"unknown metric {base!r}; known: {', '.join(REGISTRY)}")
    return base + count_suffix(n)


def best_key(base: str, n: int) -> str:
    """The score that picks the best checkpoint for a metric: 'kid1k', 'modes1k/covered'."""
    return metric_name(base, n) + REGISTRY[base].headline


def compute(base: str, n: int, gen: dict, ref: dict | None, **kwargs: object) -> dict[str, float]:
    """Run a registered metric; keys are the metric's name plus its sub-results (`kid1k`, `kid1k/std`)."""
    metric = REGISTRY[base]
    if metric.needs_real and ref is None:
        raise ValueError(f"{base} needs reference statistics")
    name = metric_name(base, n)
    return {name + suffix: value for suffix, value in metric.compute(gen, ref, **kwargs).items()}
