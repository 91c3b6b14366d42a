"""Public API of flowergan_eval: evaluate a checkpoint (used by the CLI), in-training metrics, synth_scores.

`in_training_metric` is what the training loop calls every `eval.every` steps, for any registry metric: the
extractor and the reference statistics are loaded once per process (and the statistics cached on disk), so each
call costs only n generated images through the extractor. `synth_scores` gives the SynthFlowers quality numbers
(synth-FD, modes covered, KL) of a generator for benchmarks, with nothing to download.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowergan.artifacts import Artifact
from flowergan.config import Config
from flowergan.devices import pick_device, unwrap
from flowergan.errors import UserError
from flowergan_eval import diversity as DV
from flowergan_eval import features as FT
from flowergan_eval import metrics as M
from flowergan_eval.real import RealSet, load_real, open_real
from flowergan_eval.stats import Reference, reference


@dataclass
class Options:
    """What every flowergan-eval command shares."""

    data: str = ""
    n: int = 10_000
    batch: int = 64
    device: str = "auto"
    raw: bool = False
    seed: int = 0
    inception_weights: str | None = None
    ref_n: int = 0  # real images in the reference set (0 = all)
    progress: bool = True
    features: str = ""  # extractor of the feature-space metrics: "" = each metric's own, inception, synth, PATH


class Evaluation:
    """One checkpoint's generator against one reference shard set, computing each piece once."""

    def __init__(self, ckpt: str | Path | None, opts: Options, *, bar=None):
        self.opts = opts
        self.device = pick_device(opts.device)
        self.bar = bar
        if opts.n < 2:
            raise UserError(f"--n {opts.n}: must be >= 2 (the statistics need at least 2 generated images)")
        if opts.batch < 1:
            raise UserError(f"--batch {opts.batch}: must be >= 1")
        self.ckpt: Path | None = None  # the checkpoint directory or export folder evaluated
        self.artifact: Artifact | None = None
        self.G: nn.Module | None = None
        self.generator_name = "G"
        self.state: dict[str, Any] = {}
        self.extractor_of: dict[str, str] = {}  # metric key -> the network that read the images
        if ckpt is not None:
            from flowergan.artifacts import open_artifact

            # A run dir, a checkpoint or an export folder (G only: the measures that need D say so in one line).
            self.artifact = open_artifact(ckpt, ema=not opts.raw, device=self.device)
            self.ckpt, self.G, self.cfg = self.artifact.path, self.artifact.G, self.artifact.cfg
            self.generator_name, self.state = self.artifact.generator_name, self.artifact.state
            self.nz = self.cfg.model.nz
            self.resolution = self.cfg.model.resolution
        self.data_problem = ""  # why the run's recorded data could not be used, said when real images are needed
        if not opts.data and self.artifact is not None:
            self.opts = opts = self._recorded_data(opts)
        self.real: RealSet | None = open_real(opts.data) if opts.data else None
        if self.real is not None and self.ckpt is not None and self.real.resolution != self.resolution:
            raise UserError(f"--data {opts.data} holds {self.real.resolution} px images but {self.ckpt} generates "
                            f"{self.resolution} px images; evaluate against shards of the same size "
                            f"(`flowergan data shard SRC --out DIR --size {self.resolution}`)")

    def _recorded_data(self, opts: Options) -> Options:
        """`opts` with --data set to the shards the run recorded in its config (eval.data, else data.path), said in
        one line on stderr; unchanged (the reason kept for require_real) when that path is not readable here."""
        assert self.artifact is not None
        path = recorded_data(self.artifact)
        if not path:
            return opts
        try:
            open_real(path)
        except UserError as e:
            self.data_problem = f"--data not given, and {path} (recorded in {self.ckpt}'s config) is not " \
                                f"readable here ({e}); pass --data SHARDS"
            return opts
        print(f"--data not given: using {path}, the shards recorded in the run's config", file=sys.stderr)
        return replace(opts, data=path)

    # ------------------------------------------------------------ pieces, each computed once
    @property
    def default_features(self) -> str:
        """The extractor of the measures that do not name one (diversity, stats): --features, else the one a caller
        chose (`diversity_features`: the report's plan), else Inception."""
        return self.opts.features or self.diversity_features or "inception"

    diversity_features = ""  # set by the report to the extractor its plan found

    def extractor_for(self, spec: str) -> Any:
        """The extractor `spec` names (inception, synth, PATH), loaded once."""
        cache = self.__dict__.setdefault("_extractors", {})
        if spec not in cache:
            from flowergan_eval.extractors import load_extractor

            cache[spec] = load_extractor(spec, real=self.real, device=self.device,
                                         inception_weights=self.opts.inception_weights, progress=self.bar)
        return cache[spec]

    def reference_for(self, spec: str, labels: bool = False) -> Reference:
        """Features and statistics of the real images in `spec`'s features (cached on disk by extractor); `labels`:
        with each image's class (the per-class metrics)."""
        cache = self.__dict__.setdefault("_references", {})
        if spec not in cache or (labels and cache[spec].labels is None):
            cache[spec] = reference(self.require_real(), self.extractor_for(spec), n=self.opts.ref_n,
                                    batch=self.opts.batch, progress=self.bar, labels=labels)
        return cache[spec]

    def fake_for(self, spec: str) -> FT.Features:
        """The n generated images in `spec`'s features (G's images are reused when they are kept already)."""
        cache = self.__dict__.setdefault("_fakes", {})
        if spec not in cache:
            images = FT.generate(self.generator(), self.z, batch=self.opts.batch, device=self.device,
                                 y=self.fake_labels)
            if self.computed("fake_images"):  # already generated: reuse rather than run G again
                images = self.fake_images.split(self.opts.batch)
            cache[spec] = FT.extract(self.extractor_for(spec), images, self.opts.n, progress=self.bar,
                                     description="generated features")
        return cache[spec]

    @cached_property
    def extractor(self) -> Any:
        return self.extractor_for(self.default_features)

    def require_real(self) -> RealSet:
        if self.real is None:
            raise UserError(self.data_problem or "--data is required: the real shards to compare with")
        return self.real

    @cached_property
    def reference(self) -> Reference:
        return self.reference_for(self.default_features)

    @cached_property
    def z(self) -> torch.Tensor:
        return FT.latents(self.opts.n, self.nz, self.opts.seed)

    @cached_property
    def fake_labels(self) -> torch.Tensor | None:
        """The class of each generated image of a conditional G (i mod K); None for an unconditional G."""
        return FT.sample_labels(self.generator(), self.opts.n)

    @cached_property
    def fake_images(self) -> torch.Tensor:
        """All n generated images as uint8 on the CPU (for the diversity measures and the report)."""
        return torch.cat([x.cpu() for x in FT.generate(self.generator(), self.z, batch=self.opts.batch,
                                                       device=self.device, y=self.fake_labels)])

    @cached_property
    def fake(self) -> FT.Features:
        return self.fake_for(self.default_features)

    @cached_property
    def real_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        return load_real(self.require_real(), self.reference.n)

    def computed(self, piece: str) -> bool:
        """Whether a cached piece (e.g. "real_images") was already computed, so a caller can reuse it for free."""
        return piece in self.__dict__  # where functools.cached_property keeps its values

    def generator(self) -> nn.Module:
        """The checkpoint's generator (G_ema unless --raw); needs --ckpt."""
        self.require_ckpt()
        assert self.G is not None  # loaded with the checkpoint
        return self.G

    def require_ckpt(self) -> Path:
        if self.ckpt is None:
            raise UserError("--ckpt is required: a run directory, a checkpoint directory or an export folder")
        return self.ckpt

    def require_checkpoint(self, why: str) -> Path:
        """The checkpoint directory, for what needs more than G (D, the run's logs); an export folder holds G only,
        which is a one-line error saying `why` it is not enough."""
        self.require_ckpt()
        assert self.artifact is not None
        return self.artifact.require_checkpoint(why)

    # ------------------------------------------------------------ results
    def provenance(self, *, with_reference: bool = True, with_extractor: bool = True) -> dict[str, Any]:
        """Everything a reader needs to interpret the numbers (the extractors and references actually used)."""
        prov: dict[str, Any] = {"n": self.opts.n, "seed": self.opts.seed}
        if self.ckpt is not None:
            prov.update(checkpoint=str(self.ckpt), step=self.state.get("step"), generator=self.generator_name)
        refs: dict[str, Reference] = self.__dict__.get("_references", {})
        if with_reference and self.real is not None:
            ref = next(iter(refs.values()), None) or self.reference
            prov["reference"] = {**self.real.describe(), "n": ref.n, "cached": ref.cached,
                                 "skipped": ref.meta.get("skipped", 0)}
        used: dict[str, Any] = self.__dict__.get("_extractors", {})
        if with_extractor and not used:
            used = {self.default_features: self.extractor}
        if with_extractor:
            res = self.resolution if self.ckpt is not None else self.require_real().resolution
            from flowergan_eval.stats import resize_of

            prov["extractor"] = "; ".join(e.name for e in used.values())
            prov["resize"] = "; ".join(resize_of(e, res) for e in used.values())
            prov["extractors"] = {spec: e.name for spec, e in used.items()}
        return prov

    def mode_predictions(self, oracle_dir: str | None = None, train: bool = False) -> tuple[dict, dict[str, Any]]:
        """The mode oracle's reading of the n generated images: ({"modes", "num_modes"}, oracle info); `train`
        trains the oracle of --data (with a progress bar) when none is cached yet."""
        cache = self.__dict__.setdefault("_modes", {})
        if oracle_dir not in cache:
            from flowergan_eval import oracle as O

            if oracle_dir:
                model, info = O.load(Path(oracle_dir))
                path = Path(oracle_dir)
            elif self.real is None:
                raise UserError("modes needs the oracle: pass --data SYNTH_SHARDS (its trained oracle) or --oracle DIR")
            elif train or (O.default_dir(self.real) / "oracle.json").is_file():
                model, info, path = O.ensure(self.real, progress=self.bar)
            else:
                raise UserError(f"no oracle trained on {self.real.path} yet: run `flowergan-eval oracle train --data "
                                f"{self.real.path}` (or pass --oracle DIR)")
            pred = model.predict(self.fake_images).numpy()
            cache[oracle_dir] = ({"modes": pred, "num_modes": int(info["num_modes"])},
                                 {**info, "path": str(path)})
        return cache[oracle_dir]

    def metrics(self, bases: list[str], *, oracle_dir: str | None = None, min_count: int = 0) -> dict[str, float]:
        """Registered metrics of n generated images, each in its extractor's features (`self.extractor_of` names
        the extractor of every key)."""
        out: dict[str, float] = {}
        names = self.extractor_of
        for base in bases:
            entry = M.REGISTRY[base]
            per_class = entry.facts.per_class
            if per_class and self.fake_labels is None:
                raise UserError(f"{base} scores a class-conditional generator class by class; {self.ckpt} is "
                                "unconditional (model.conditional = 'none')")
            if entry.features == "oracle":
                gen, info = self.mode_predictions(oracle_dir)
                ref, label = None, f"mode oracle {info['path']} (held-out accuracy {info['accuracy']:.2%})"
            else:
                spec = self.opts.features or entry.features
                gen = self.fake_for(spec).as_dict()
                ref = self.reference_for(spec, labels=per_class).as_dict() if entry.needs_real else None
                label = self.extractor_for(spec).name
            if per_class and self.fake_labels is not None:
                gen = {**gen, "labels": self.fake_labels.numpy()}
            classes = self.real.classes if self.real is not None else None
            try:
                values = M.compute(base, self.opts.n, gen, ref, seed=M.SHUFFLE_SEED, device=self.device,
                                   min_count=min_count, classes=classes)
            except KeyError:
                raise UserError(f"{base} needs class logits, which --features {self.opts.features} does not "
                                "give; use --features inception or synth") from None
            except ValueError as e:  # too few images for the metric: the user's numbers, so the user's error
                raise UserError(f"{base}: {e}; raise --n (generated) or --ref-n (real)") from None
            out.update(values)
            names.update({k: label for k in values})
        return out

    def diversity(self, n_pairs: int = 1000) -> dict[str, Any]:
        """Mode-collapse measures: MS-SSIM (generated vs real), NDB/JS, near duplicates, memorisation."""
        real_x, _ = self.real_images
        fake_pool, real_pool = self.fake.pool, self.reference.pool
        if len(real_pool) < 4:
            raise UserError(f"diversity needs at least 4 real images, the reference set has {len(real_pool)}")
        ms_fake, scales = DV.mean_ms_ssim(self.fake_images, n_pairs=n_pairs, seed=self.opts.seed)
        ms_real, _ = DV.mean_ms_ssim(real_x, n_pairs=n_pairs, seed=self.opts.seed)
        nd = DV.ndb(real_pool, fake_pool, k=100, seed=self.opts.seed)
        dup = DV.near_duplicate_rate(real_pool, fake_pool)
        mem = DV.memorisation(real_pool, fake_pool)
        n = self.opts.n
        c = M.count_suffix(n)
        values = {
            f"ms_ssim{c}/generated": ms_fake, f"ms_ssim{c}/real": ms_real,
            f"ndb{c}/ndb": nd["ndb"], f"ndb{c}/ndb_over_k": nd["ndb_over_k"], f"ndb{c}/js": nd["js"],
            f"near_dup{c}/rate": dup["near_dup_rate"],
            f"memorisation{c}/nn_ratio": mem["nn_ratio"], f"memorisation{c}/nn_dist_median": mem["nn_dist_median"],
        }
        details = {"ms_ssim_scales": scales, "ms_ssim_pairs": min(n_pairs, n * (n - 1) // 2), "ndb_k": nd["k"],
                   "near_dup_threshold": dup["threshold"], "real_nn_dist_median": mem["real_nn_dist_median"],
                   "closest": mem["closest"]}
        return {"metrics": values, "details": details}


def recorded_data(artifact: Artifact) -> str:
    """The reference shards a checkpoint's run recorded (eval.data, else data.path); '' for an export folder, whose
    config keeps only [model]."""
    cfg = artifact.state.get("config") if artifact.kind == "checkpoint" else None
    if not isinstance(cfg, dict):
        return ""
    return str(cfg.get("eval", {}).get("data") or cfg.get("data", {}).get("path") or "")


# ---------------------------------------------------------------- for the training loop
_ANNOUNCED: set[str] = set()


def _samples(G: nn.Module, nz: int, n: int, seed: int, device: torch.device
             ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """n uint8 samples of G in eval mode (restored after), and each one's class for a conditional G (else None); z
    from its own seed, so the global RNGs are untouched."""
    G = unwrap(G)
    labels = FT.sample_labels(G, n)
    return list(FT.generate(G, FT.latents(n, nz, seed), batch=64, device=device, y=labels)), labels


def registry_scores(base: str, images: list[torch.Tensor], real: RealSet, *, device: torch.device,
                    inception_weights: str | None = None, features: str = "", labels: torch.Tensor | None = None
                    ) -> tuple[dict[str, float], str]:
    """One registry metric of generated uint8 batches against `real`, and the name of what read the images.

    Feature metrics use `features` (or the metric's own extractor); the mode metrics use the mode oracle. SynthNet
    and the oracle are trained on `real` and cached the first time they are needed, so nothing is downloaded.
    """
    if base not in M.REGISTRY:
        raise UserError(f"eval.metric: {base!r} is not a registered metric; one of: {', '.join(M.REGISTRY)}")
    entry = M.REGISTRY[base]
    per_class = entry.facts.per_class
    if per_class and labels is None:
        raise UserError(f"eval.metric = {base!r} scores a class-conditional generator; set model.conditional")
    n = sum(len(x) for x in images)
    gen: dict[str, Any]
    if entry.features == "oracle":
        from flowergan_eval import oracle as O

        model, info, path = O.ensure(real)
        gen = {"modes": model.predict(torch.cat([x.cpu() for x in images])).numpy(),
               "num_modes": int(info["num_modes"])}
        ref, label = None, f"mode oracle {path} (held-out accuracy {info['accuracy']:.2%})"
    else:
        from flowergan_eval.extractors import load_extractor

        extractor = load_extractor(features or entry.features, real=real, device=device,
                                   inception_weights=inception_weights)
        gen = FT.extract(extractor, images, n).as_dict()
        ref = reference(real, extractor, labels=per_class).as_dict() if entry.needs_real else None
        label = extractor.name
    if per_class and labels is not None:
        gen["labels"] = labels.numpy()
    out = M.compute(base, n, gen, ref, device=device, classes=real.classes)
    # The loop logs every key: constants (the subset size, the number of modes) would only clutter the logs.
    return {k: float(v) for k, v in out.items() if not k.endswith(("/subset_size", "/of"))}, label


def in_training_metric(G: nn.Module, *, nz: int, metric: str, n: int, data: str, device: str | torch.device,
                       inception_weights: str | None, seed: int = 0, features: str = "") -> dict[str, float]:
    """Any registry metric of n samples of G against `data`, e.g. {"kid1k": 0.012, "kid1k/std": 0.001}.

    `M.best_key(metric, n)` names the score that picks "best" and the registry says its direction. The extractor
    (or oracle) is named on stderr the first time, since the scores themselves are plain numbers.
    """
    dev = pick_device(device)
    real = open_real(data)
    images, labels = _samples(G, nz, n, seed, dev)
    scores, label = registry_scores(metric, images, real, device=dev, inception_weights=inception_weights,
                                    features=features, labels=labels)
    key = M.best_key(metric, n)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(f"eval: {key} ({'lower' if M.REGISTRY[metric].lower_is_better else 'higher'} is better) read by "
              f"{label}, against {real.path}", file=sys.stderr)
    return scores


def synth_scores(G: nn.Module, *, nz: int, n: int, data: str, device: str | torch.device, seed: int = 0
                 ) -> dict[str, float]:
    """synth-FD, modes covered and KL(modes || uniform) of n samples of G on SynthFlowers shards `data`.

    Keys: "synth_fd<n>" (also under its registry name, e.g. "synth_fd1k"), "modes_covered", "modes_kl",
    "modes_of". SynthNet and the mode oracle are trained on `data` and cached if they are not yet.
    """
    dev = pick_device(device)
    real = open_real(data)
    images, _ = _samples(G, nz, n, seed, dev)
    fd, _ = registry_scores("synth_fd", images, real, device=dev)
    modes, _ = registry_scores("modes", images, real, device=dev)
    c = M.count_suffix(n)
    return {f"synth_fd{n}": fd[f"synth_fd{c}"], f"synth_fd{c}": fd[f"synth_fd{c}"],
            "modes_covered": modes[f"modes{c}/covered"], "modes_kl": modes[f"modes{c}/kl_uniform"],
            "modes_of": float(real.num_classes)}


@dataclass(frozen=True)
class InTrainingEval:
    """The callable the training loop is handed (`evaluate(G, device) -> scores`); plain data, so it travels to
    Ray Train workers. Built by the CLI with `in_training_evaluator`: the loop never imports this package."""

    metric: str
    n: int
    data: str
    inception_weights: str | None
    nz: int
    seed: int
    features: str = ""  # "" = the metric's own extractor

    @property
    def best_key(self) -> str:
        """The score that picks the best checkpoint, e.g. kid1k or modes1k/covered."""
        return M.best_key(self.metric, self.n)

    @property
    def lower_is_better(self) -> bool:
        """The registry's direction of the metric (distances and KL: lower; modes covered: higher)."""
        return M.REGISTRY[self.metric].lower_is_better

    def __call__(self, G: nn.Module, device: torch.device) -> dict[str, float]:
        return in_training_metric(G, nz=self.nz, metric=self.metric, n=self.n, data=self.data, device=device,
                                  inception_weights=self.inception_weights, seed=self.seed, features=self.features)


def in_training_evaluator(cfg: Config) -> InTrainingEval | None:
    """The in-training evaluation `cfg.eval` asks for (reference data defaults to `data.path`); None when off."""
    if cfg.eval.every <= 0:
        return None
    return InTrainingEval(metric=cfg.eval.metric, n=cfg.eval.n, data=cfg.eval.data or cfg.data.path,
                          inception_weights=cfg.eval.inception_weights or None, nz=cfg.model.nz,
                          seed=cfg.train.seed, features=cfg.eval.features)


def to_json(result: dict[str, Any]) -> str:
    """One JSON object (numpy scalars and paths made plain)."""
    def plain(o: Any) -> Any:
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(result, default=plain, sort_keys=False)
