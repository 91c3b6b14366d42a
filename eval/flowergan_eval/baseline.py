"""What the report's measures score for real images against real images: the number each generated score is read
against. An FD of 30 is good where two sets of real images score 25 and poor where they score 2, and a small N
inflates FD and KL for real images too, so the comparison uses the same N (or as many real images as there are).

The same pure metric functions run with m held-out real images in place of the generated ones, against the other
real images of the reference set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flowergan_eval import diversity as DV
from flowergan_eval import metrics as M


def split(pool: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first m = min(n, half) real feature rows, and the rest (disjoint: a set compared with itself scores 0)."""
    m = min(n, len(pool) // 2)
    return pool[:m], pool[m:]


def feature_baseline(base: str, n: int, pool: np.ndarray, *, device: Any = None) -> dict[str, float]:
    """Registry metric `base` of real against real features, under the keys the generated scores have (named for
    n). {} where it cannot be computed (IS: the reference keeps no logits; fewer than 4 real images)."""
    held, rest = split(pool, n)
    if base == "is" or len(held) < 2 or len(rest) < 2:
        return {}
    mu, sigma = M.feature_stats(rest)
    out = M.compute(base, n, {"pool": held}, {"pool": rest, "mu": mu, "sigma": sigma}, seed=M.SHUFFLE_SEED,
                    device=device)
    return {k: v for k, v in out.items() if not k.endswith("/subset_size")}


def diversity_baseline(n: int, pool: np.ndarray, seed: int = 0) -> dict[str, float]:
    """NDB, near duplicates and memorisation of held-out real images against the other real images."""
    held, rest = split(pool, n)
    if len(held) < 2 or len(rest) < 4:
        return {}
    c = M.count_suffix(n)
    nd = DV.ndb(rest, held, k=100, seed=seed)  # as for the generated score (capped at half the real images)
    dup = DV.near_duplicate_rate(rest, held)
    mem = DV.memorisation(rest, held)
    return {f"ndb{c}/ndb": nd["ndb"], f"ndb{c}/ndb_over_k": nd["ndb_over_k"], f"ndb{c}/js": nd["js"],
            f"near_dup{c}/rate": dup["near_dup_rate"], f"memorisation{c}/nn_ratio": float(mem["nn_ratio"]),  # type: ignore[arg-type]
            f"memorisation{c}/nn_dist_median": float(mem["nn_dist_median"])}  # type: ignore[arg-type]


def modes_baseline(n: int, real_images: Any, oracle_path: str) -> dict[str, float]:
    """Modes covered and KL to uniform of min(n, all) real images, read by the same oracle with the same rule."""
    from flowergan_eval import oracle as O

    model, info = O.load(Path(oracle_path))
    x = real_images[:n]
    k = int(info["num_modes"])
    s = M.mode_stats(model.predict(x).numpy(), k, M.default_min_count(len(x), k))
    c = M.count_suffix(n)
    return {f"modes{c}/covered": float(s["covered"]), f"modes{c}/kl_uniform": s["kl_uniform"]}
