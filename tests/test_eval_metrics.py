"""Pure metric functions of flowergan_eval: FID, KID, IS, PRDC, the registry, and the diversity measures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from flowergan_eval import diversity as DV
from flowergan_eval import metrics as M


def _gauss(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * scale + shift).astype(np.float32)


def _fid_sqrtm(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (independent of ours)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_identical_statistics_is_zero():
    mu, s = M.feature_stats(_gauss(300, 32, 0))
    assert abs(M.fid(mu, s, mu, s)) < 1e-9 * np.trace(s)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.0), (0.0, 1.7), (1.0, 0.5)])
def test_fid_agrees_with_scipy_sqrtm(shift, scale):
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((48, 48)) * 0.3  # correlated features, as Inception's are
    a = _gauss(800, 48, 2) @ (np.eye(48) + mix)
    b = _gauss(800, 48, 3, shift, scale) @ (np.eye(48) + mix.T)
    stats = (*M.feature_stats(a), *M.feature_stats(b))
    ours, ref = M.fid(*stats), _fid_sqrtm(*stats)
    assert ref > 1.0
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_stays_real_and_finite_for_near_singular_covariances():
    # 12 samples in 256 dimensions: both covariances have rank 11, the product has ~245 zero eigenvalues.
    a, b = _gauss(12, 256, 4), _gauss(12, 256, 5, shift=0.2)
    mu1, s1 = M.feature_stats(a)
    mu2, s2 = M.feature_stats(b)
    value = M.fid(mu1, s1, mu2, s2)
    assert np.isfinite(value) and isinstance(value, float)
    assert value > 0
    assert abs(M.fid(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)  # singular, yet the self-distance is 0
    # A rank-deficient difference of means still registers: shifting one set raises the distance.
    assert M.fid(mu1, s1, mu2 + 1.0, s2) > value


@pytest.mark.parametrize("n1,n2", [(12, 40), (40, 12), (30, 30), (300, 200)])
def test_fid_from_features_equals_the_covariance_route(n1, n2):
    a, b = _gauss(n1, 64, 30), _gauss(n2, 64, 31, shift=0.3, scale=1.2)
    ref = _fid_sqrtm(*M.feature_stats(a), *M.feature_stats(b)) if min(n1, n2) >= 64 else \
        M.fid(*M.feature_stats(a), *M.feature_stats(b))
    assert M.fid_from_features(a, b) == pytest.approx(ref, rel=1e-7)
    assert abs(M.fid_from_features(a, a)) < 1e-9 * M.fid_from_features(a, b)


def test_fid_rejects_mismatched_statistics():
    mu, s = M.feature_stats(_gauss(20, 8, 0))
    with pytest.raises(ValueError, match="do not match"):
        M.fid(mu, s, mu[:4], s[:4, :4])


def test_kid_of_one_distribution_is_about_zero_and_grows_with_a_shift():
    a, b = _gauss(400, 64, 6), _gauss(400, 64, 7)
    same, same_std, m = M.kid(a, b, subsets=50, subset_size=200)
    assert m == 200
    assert abs(same) < 3 * same_std + 1e-4
    shifted, _, _ = M.kid(a, _gauss(400, 64, 8, shift=0.5), subsets=50, subset_size=200)
    assert shifted > 50 * max(abs(same), same_std)


def test_kid_caps_subset_size_at_the_smaller_sample():
    mean, std, m = M.kid(_gauss(30, 16, 0), _gauss(50, 16, 1), subsets=10)
    assert m == 30 and np.isfinite(mean) and np.isfinite(std)


def test_inception_score_bounds():
    n, classes = 1000, 10
    uniform = np.zeros((n, classes), np.float32)
    assert M.inception_score(uniform)[0] == pytest.approx(1.0, abs=1e-9)
    confident = np.full((n, classes), -50.0, np.float32)
    confident[np.arange(n), np.arange(n) % classes] = 50.0  # sharp and evenly spread: IS -> #classes
    score, std = M.inception_score(confident)
    assert 9.5 < score <= 10.0 + 1e-6 and std < 0.5
    collapsed = np.full((n, classes), -50.0, np.float32)
    collapsed[:, 3] = 50.0  # sharp but one class: IS -> 1
    assert M.inception_score(collapsed)[0] == pytest.approx(1.0, abs=1e-6)


def test_prdc_on_one_gaussian_gives_density_and_coverage_near_one():
    real, fake = _gauss(1500, 16, 9), _gauss(1500, 16, 10)
    r = M.prdc(real, fake, k=5)
    assert 0.9 < r["density"] < 1.1
    assert r["coverage"] > 0.93  # expected 1 - 2^-k = 0.97 for identical distributions
    assert r["precision"] > 0.7 and r["recall"] > 0.7
    off = M.prdc(real, _gauss(1500, 16, 11, shift=1.5), k=5)
    assert off["precision"] < r["precision"] - 0.3 and off["coverage"] < r["coverage"] - 0.3


def test_prdc_precision_recall_equal_torch_fidelitys():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    real, fake = _gauss(300, 24, 12), _gauss(250, 24, 13, shift=0.4, scale=1.3)
    ours = M.prdc(real, fake, k=5, chunk=64)  # small chunks: the chunked loops must not change the result
    precision, recall = calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real),
                                                         neighborhood=5)
    assert ours["precision"] == pytest.approx(precision, abs=1e-6)  # theirs is a float32 mean
    assert ours["recall"] == pytest.approx(recall, abs=1e-6)


def test_registry_names_carry_the_sample_count():
    assert M.metric_name("fid", 10000) == "fid10k"
    assert M.metric_name("kid", 500) == "kid500"
    assert M.metric_name("is", 50000) == "is50k" and M.metric_name("prdc", 1500) == "prdc1500"
    with pytest.raises(KeyError):
        M.metric_name("fidd", 10000)
    gen = {"pool": _gauss(60, 8, 0), "logits": _gauss(60, 5, 1)}
    real = _gauss(80, 8, 2)
    mu, s = M.feature_stats(real)
    ref = {"pool": real, "mu": mu, "sigma": s}
    out = {}
    for base, entry in M.REGISTRY.items():
        # The mode metrics read predicted modes, not features (test_eval_synth.py); the per-class ones need labels
        # (test_eval_per_class.py).
        if entry.features != "oracle" and not entry.facts.per_class:
            out.update(M.compute(base, 60, gen, ref))
    assert {"fid60", "kid60", "kid60/std", "is60", "is60/std", "prdc60/precision", "prdc60/coverage",
            "synth_fd60"} <= set(out)
    assert out["synth_fd60"] == out["fid60"]  # the same formula; only the default extractor differs
    assert out["fid60"] == pytest.approx(M.fid(*M.feature_stats(gen["pool"]), mu, s))
    with pytest.raises(ValueError, match="reference"):
        M.compute("fid", 60, gen, None)


# ---------------------------------------------------------------- diversity
def _clusters(per: int, classes: list[int], seed: int, d: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((5, d)) * 6
    return np.concatenate([centers[c] + rng.standard_normal((per, d)) for c in classes]).astype(np.float32)


def test_ndb_rises_when_one_class_is_removed():
    real = _clusters(200, [0, 1, 2, 3, 4], seed=1)
    full = _clusters(200, [0, 1, 2, 3, 4], seed=2)
    missing = _clusters(250, [0, 1, 2, 3], seed=3)
    a = DV.ndb(real, full, k=20)
    b = DV.ndb(real, missing, k=20)
    assert a["k"] == 20
    assert b["ndb"] > a["ndb"] + 3  # the bins of the missing class (and the inflated others) all differ
    assert b["js"] > 3 * a["js"]
    assert DV.ndb(real, full, k=20) == a  # seeded k-means: the same answer twice


def test_js_divergence_limits():
    assert DV.js_divergence(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(0.0, abs=1e-12)
    assert DV.js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)


def test_near_duplicates_and_memorisation_flag_copies():
    real = _gauss(1000, 16, 20)
    fresh = _gauss(1000, 16, 21)
    dup = np.repeat(_gauss(100, 16, 22), 10, axis=0) + 1e-3 * _gauss(1000, 16, 23)
    assert DV.near_duplicate_rate(real, fresh)["near_dup_rate"] < 0.04  # ~1% by construction
    assert DV.near_duplicate_rate(real, dup)["near_dup_rate"] > 0.95
    healthy = DV.memorisation(real, fresh)
    copies = DV.memorisation(real, real[:100] + 1e-3 * _gauss(100, 16, 24))
    assert 0.7 < healthy["nn_ratio"] < 1.4
    assert copies["nn_ratio"] < 0.01
    j, i, dist = copies["closest"][0]
    assert i == j and dist < 0.01  # the copy of training image i is reported next to image i


def test_ms_ssim_is_high_for_look_alikes_and_lower_for_diverse_images():
    g = torch.Generator().manual_seed(0)
    base = (torch.rand(1, 3, 64, 64, generator=g) * 255)
    look_alike = (base + 4 * torch.randn(16, 3, 64, 64, generator=g)).clamp(0, 255).to(torch.uint8)
    smooth = torch.nn.functional.interpolate(torch.rand(16, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear")
    diverse = (smooth * 255).to(torch.uint8)
    same, scales = DV.mean_ms_ssim(look_alike.repeat(1, 1, 1, 1)[:1].repeat(4, 1, 1, 1))
    assert same == pytest.approx(1.0, abs=1e-4) and scales == 3
    high, _ = DV.mean_ms_ssim(look_alike, n_pairs=40)
    low, _ = DV.mean_ms_ssim(diverse, n_pairs=40)
    assert high > low + 0.2
    assert DV.ms_ssim_scales(128) == 4 and DV.ms_ssim_scales(256) == 5


def test_random_pairs_are_distinct_and_unordered():
    p = DV.random_pairs(50, 100, seed=0)
    assert len(p) == 100 and (p[:, 0] < p[:, 1]).all() and len({tuple(x) for x in p}) == 100
    assert len(DV.random_pairs(5, 100, seed=0)) == 10  # all pairs when there are fewer than asked
