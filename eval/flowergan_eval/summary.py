"""The report's reading of its numbers: metrics grouped into fidelity, diversity and memorisation, each beside what
real images score (baseline.py), the direction to aim for, and the verdict in a sentence at the top of the page.
Pure functions of the metric dicts."""

from __future__ import annotations

import re

from flowergan_eval.ui import fmt

GROUPS = ("fidelity", "diversity", "memorisation")
FD_BASES = ("fid", "synth_fd", "effnet_fd")

# (base, sub-result) -> (group, aim); a sub-result of None matches the base's other keys.
_FACTS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("fid", None): ("fidelity", "lower"), ("synth_fd", None): ("fidelity", "lower"),
    ("effnet_fd", None): ("fidelity", "lower"), ("kid", None): ("fidelity", "lower"),
    ("is", None): ("fidelity", "higher"),
    ("prdc", "precision"): ("fidelity", "higher"), ("prdc", "density"): ("fidelity", "near 1"),
    ("prdc", "recall"): ("diversity", "higher"), ("prdc", "coverage"): ("diversity", "higher"),
    ("ms_ssim", "generated"): ("diversity", "near the real images'"), ("ms_ssim", None): ("diversity", ""),
    ("ndb", None): ("diversity", "lower"),
    ("modes", "covered"): ("diversity", "higher"), ("modes", "of"): ("diversity", ""),
    ("modes", "kl_uniform"): ("diversity", "lower"),
    ("modes", None): ("diversity", ""),
    ("near_dup", None): ("memorisation", "lower"), ("memorisation", "nn_ratio"): ("memorisation", "near 1 or above"),
    ("memorisation", None): ("memorisation", ""),
}


def split_key(key: str) -> tuple[str, str]:
    """'synth_fd2k' -> ('synth_fd', ''); 'prdc12/coverage' -> ('prdc', 'coverage')."""
    m = re.match(r"^([a-z_]+?)\d+k?(?:/(.*))?$", key)
    return (m.group(1), m.group(2) or "") if m else (key, "")


def facts(key: str) -> tuple[str, str]:
    """(group, aim) of a metric key."""
    base, sub = split_key(key)
    return _FACTS.get((base, sub)) or _FACTS.get((base, None)) or ("fidelity", "")


def drop_misleading(metrics: dict[str, float], n: int) -> dict[str, float]:
    """Without the numbers that mislead: KID's std when each subset holds every generated image (it then measures
    only the draw of real images, not how sure the score is)."""
    out = {}
    for key, value in metrics.items():
        base, sub = split_key(key)
        if base == "kid" and sub == "std" and metrics.get(key[:-len("std")] + "subset_size", 0) >= n:
            continue
        out[key] = value
    return out


def grouped(metrics: dict[str, float]) -> dict[str, list[str]]:
    """group -> its metric keys, in the order they were computed."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for key in metrics:
        out[facts(key)[0]].append(key)
    return out


def _ratio_words(ratio: float) -> str:
    if ratio <= 1.5:
        return "close to real images"
    if ratio <= 4:
        return "visibly off real images"
    return "far from real images"


def verdict(metrics: dict[str, float], reference: dict[str, float], n: int) -> list[str]:
    """One sentence each for fidelity, diversity and mode coverage, every number beside what real images score."""
    out = []
    fd = next((k for k in metrics if split_key(k)[0] in FD_BASES and not split_key(k)[1]), None)
    if fd is not None and reference.get(fd, 0) > 0:
        ratio = metrics[fd] / reference[fd]
        out.append(f"Fidelity: {_ratio_words(ratio)}: {fd} = {fmt(metrics[fd])} against {fmt(reference[fd])} for "
                   f"real vs real images at the same N ({ratio:.1f}x).")
    elif fd is not None:
        out.append(f"Fidelity: {fd} = {fmt(metrics[fd])} (no real-vs-real value: too few real images).")
    else:
        out.append("Fidelity: not measured (no Fréchet distance could be computed here; see what was left out).")
    ms = next((k for k in metrics if k.startswith("ms_ssim") and k.endswith("/generated")), None)
    cov = next((k for k in metrics if k.startswith("prdc") and k.endswith("/coverage")), None)
    parts = []
    if ms is not None:
        real = metrics.get(ms.replace("/generated", "/real"))
        alike = real is not None and metrics[ms] > real + 0.05
        parts.append(f"samples are {'more alike than' if alike else 'about as varied as'} real images (MS-SSIM "
                     f"{fmt(metrics[ms])} between samples, {fmt(real)} between real images; higher = more alike)")
    if cov is not None:
        parts.append(f"coverage {fmt(metrics[cov])} against {fmt(reference.get(cov, '-'))} for real images")
    if parts:
        out.append("Diversity: " + "; ".join(parts) + ".")
    covered = next((k for k in metrics if k.startswith("modes") and k.endswith("/covered")), None)
    if covered is not None:
        kl = covered.replace("/covered", "/kl_uniform")
        of = metrics.get(covered.replace("/covered", "/of"))
        real_cov = reference.get(covered)
        real_part = (f"; {fmt(real_cov)} modes, KL {fmt(reference.get(kl))} for real images at the same N"
                     if real_cov is not None else "")
        out.append(f"Mode coverage: {fmt(metrics[covered])} of {fmt(of)} modes, KL(modes || uniform) "
                   f"{fmt(metrics.get(kl))} nats{real_part}.")
    return out
