"""The metric catalogue: the facts of every metric, in one light module (no torch, no numpy).

Who reads it: config (`EVAL_METRICS`, the choices of eval.metric), the model card (export/card.py: which scores a
checkpoint's metrics are and which network read them), the eval registry (flowergan_eval/metrics.py adds only the
compute functions) and the eval CLI (one command per metric, its help and notes). A test fails when any of them
knows a metric this module does not. Adding a metric: an entry here, and its compute function in
flowergan_eval/metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The networks that read images for a metric, as the model card and the report name them.
EXTRACTORS = {
    "inception": "Inception-v3 pool3 (2048-d), torch-fidelity's port of the TF 2015-12-05 FID network",
    "synth": "SynthNet (128-d), trained on the reference SynthFlowers by flowergan-eval",
    "effnet-lite2": "EfficientNet-Lite2 ImageNet features (1280-d), bicubic to 260 px",
    "oracle": "the SynthFlowers mode oracle",
}


@dataclass(frozen=True)
class MetricFacts:
    """What is known of a metric before anything is computed."""

    name: str
    doc: str  # one paragraph: what it measures and its direction (the CLI's help, the report's note)
    lower_is_better: bool  # the direction in which it picks the best checkpoint
    needs_real: bool  # compares with the real shards (--data)
    features: str = "inception"  # the default extractor: a key of EXTRACTORS
    headline: str = ""  # the sub-result that picks the best checkpoint ("" = the metric's own number)
    notes: dict[str, str] = field(default_factory=dict)  # sub-result ("/std") -> what it means
    per_class: bool = False  # scores a class-conditional G class by class (model.conditional)


PRDC_K = 5  # nearest neighbours of precision/recall/density/coverage (Naeem et al. 2020 use k = 5)
_MODES = {"/covered": "modes with enough samples, read by the SynthFlowers oracle", "/of": "modes of the data set"}
_PER_CLASS = {"/mean": "the mean over the classes (each class weighs the same)",
              "/<class>": "the value for one class, named as the manifest names it"}

METRICS: dict[str, MetricFacts] = {m.name: m for m in (
    MetricFacts("fid", "Fréchet Inception Distance of n generated images against the real shards (pool3, 2048-d; "
                       "lower is better).", True, True),
    MetricFacts("kid", "Kernel Inception Distance (unbiased, cubic kernel; subset size <= n, so it works with few "
                       "images; lower is better).", True, True,
                notes={"/std": "std of KID over the random subsets", "/subset_size": "images per KID subset (capped "
                                                                                        "at N)"}),
    MetricFacts("is", "Inception Score over 10 splits (higher is better; ImageNet classes, so only a rough guide "
                      "for flowers).", False, False, notes={"/std": "std of IS over the 10 splits"}),
    MetricFacts("prdc", f"Precision (fidelity), recall (diversity), density and coverage with k = {PRDC_K} nearest "
                        "neighbours (higher is better; coverage picks the best checkpoint).", False, True,
                headline="/coverage",
                notes={"/precision": "share of generated samples inside the real manifold (fidelity)",
                       "/recall": "share of real samples inside the generated manifold (diversity)",
                       "/density": "how many real k-NN balls hold a generated sample, / k (about 1 when "
                                   "distributions match)",
                       "/coverage": "share of real samples with a generated sample in their k-NN ball (mode "
                                    "coverage)"}),
    MetricFacts("synth_fd", "Fréchet distance in the features of SynthNet, the small CNN `oracle train` fits on "
                            "SynthFlowers (128-d; no download; lower is better).", True, True, features="synth"),
    MetricFacts("effnet_fd", "Fréchet distance in ImageNet features of EfficientNet-Lite2 (1280-d, weights from the "
                             "`photo` extra, no download; sees texture; not FID; lower is better).", True, True,
                features="effnet-lite2"),
    MetricFacts("modes", "SynthFlowers modes covered (of 48, read by the mode oracle; higher is better), with "
                         "KL(modes || uniform).", False, False, features="oracle", headline="/covered",
                notes={**_MODES, "/kl_uniform": "KL(generated mode distribution || uniform) in nats; 0 = all modes "
                                                "equally often"}),
    MetricFacts("modes_kl", "KL(generated SynthFlowers modes || uniform) in nats, read by the mode oracle (0 = every "
                            "mode equally often; lower is better).", True, False, features="oracle", notes=_MODES),
    MetricFacts("intra_fd", "Intra-class Fréchet distance of a conditional G (Miyato & Koyama 2018's intra-FID, in "
                            "the features of any extractor): FD between the samples asked for as class c and the real "
                            "images of class c, for every class, and their mean (lower is better).", True, True,
                headline="/mean", notes=_PER_CLASS, per_class=True),
    MetricFacts("intra_kid", "Intra-class KID of a conditional G: KID between the samples asked for as class c and the "
                             "real images of class c, for every class, and their mean (lower is better).", True, True,
                headline="/mean", notes=_PER_CLASS, per_class=True),
    MetricFacts("class_acc", "Class accuracy of a conditional G on SynthFlowers: the share of samples asked for as "
                             "mode c that the mode oracle reads as c (higher is better), with the classes so covered.",
                False, False, features="oracle",
                notes={"/covered": "classes whose samples the oracle reads as that class at least min-count times",
                       "/of": "classes of the data set",
                       "/<class>": "the share of one class's samples read as that class"}, per_class=True),
)}

# The results of `flowergan-eval diversity`: measures of mode collapse that pick no checkpoint.
MEASURES: dict[str, dict[str, str]] = {
    "ms_ssim": {"/generated": "mean MS-SSIM of random generated pairs; well above the real figure = look-alike "
                              "samples",
                "/real": "the same for real images: the diversity to aim for"},
    "ndb": {"/ndb": "k-means bins whose generated share differs from the real share (alpha 0.05)",
            "/ndb_over_k": "the same as a share of the bins; 0 is ideal",
            "/js": "JS divergence (bits) of the bin histograms; 0 = same"},
    "near_dup": {"/rate": "samples with a generated neighbour closer than real images' 1st-percentile NN distance"},
    "memorisation": {"/nn_ratio": "median NN distance to training images / real images' own; << 1 = copying",
                     "/nn_dist_median": "median distance (in the diversity measures' features) of a sample to its "
                                       "nearest training image"},
}


def notes() -> dict[str, str]:
    """What each reported number means, by its name without the sample count: "kid", "kid/std", "ndb/js"."""
    out = {f"{base}{sub}": text for base, subs in MEASURES.items() for sub, text in subs.items()}
    for name, m in METRICS.items():
        out.update({f"{name}{sub}": text for sub, text in m.notes.items()})
        out[name] = m.doc
    return out


def extractor_label(metric: str) -> str:
    """The network that reads images for `metric` by default, in words."""
    return EXTRACTORS[METRICS[metric].features]
