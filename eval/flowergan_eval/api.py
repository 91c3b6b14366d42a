"""Public API of flowergan_eval: evaluate a checkpoint (used by the CLI) and a cheap in-training metric.

`in_training_metric` is what the training loop calls every `eval.every` steps: the extractor and the
reference statistics are loaded once per process (and the statistics cached on disk), so each call costs
only n generated images through Inception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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


class Evaluation:
    """One checkpoint's generator against one reference shard set, computing each piece once."""

    def __init__(self, ckpt: str | Path | None, opts: Options, *, bar=None):
        self.opts = opts
        self.device = pick_device(opts.device)
        self.bar = bar
        if opts.n < 2:
            raise UserError(f"--n {opts.n}: need at least 2 generated images")
        if opts.batch < 1:
            raise UserError(f"--batch {opts.batch}: must be >= 1")
        self.ckpt: Path | None = None
        self.G: nn.Module | None = None
        self.generator_name = "G"
        self.state: dict[str, Any] = {}
        if ckpt is not None:
            from flowergan.train.checkpoint import has_ema, load_generator, read_state, resolve_checkpoint

            self.ckpt = resolve_checkpoint(ckpt)
            self.G, self.cfg = load_generator(self.ckpt, ema=not opts.raw, device=self.device)
            self.generator_name = "G" if opts.raw or not has_ema(self.ckpt) else "G_ema"
            self.state = read_state(self.ckpt)
            self.nz = self.cfg.model.nz
            self.resolution = self.cfg.model.resolution
        self.real: RealSet | None = open_real(opts.data) if opts.data else None
        if self.real is not None and self.ckpt is not None and self.real.resolution != self.resolution:
            raise UserError(f"--data {opts.data} holds {self.real.resolution} px images but {self.ckpt} generates "
                            f"{self.resolution} px images; evaluate against shards of the same size "
                            f"(`flowergan data shard SRC --out DIR --size {self.resolution}`)")

    # ------------------------------------------------------------ pieces, each computed once
    @cached_property
    def extractor(self) -> FT.InceptionExtractor:
        return FT.load_inception(self.opts.inception_weights, device=self.device)

    def require_real(self) -> RealSet:
        if self.real is None:
            raise UserError("--data is required: the real shards to compare with")
        return self.real

    @cached_property
    def reference(self) -> Reference:
        return reference(self.require_real(), self.extractor, n=self.opts.ref_n, batch=self.opts.batch,
                         progress=self.bar)

    @cached_property
    def z(self) -> torch.Tensor:
        return FT.latents(self.opts.n, self.nz, self.opts.seed)

    @cached_property
    def fake_images(self) -> torch.Tensor:
        """All n generated images as uint8 on the CPU (for the diversity measures and the report)."""
        return torch.cat([x.cpu() for x in FT.generate(self.generator(), self.z, batch=self.opts.batch,
                                                       device=self.device)])

    @cached_property
    def fake(self) -> FT.Features:
        images = FT.generate(self.generator(), self.z, batch=self.opts.batch, device=self.device)
        if self.computed("fake_images"):  # already generated: reuse rather than run G again
            images = self.fake_images.split(self.opts.batch)
        return FT.extract(self.extractor, images, self.opts.n, progress=self.bar, description="generated features")

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
            raise UserError("--ckpt is required: a checkpoint directory or a run directory")
        return self.ckpt

    # ------------------------------------------------------------ results
    def provenance(self, *, with_reference: bool = True, with_extractor: bool = True) -> dict[str, Any]:
        """Everything a reader needs to interpret the numbers."""
        prov: dict[str, Any] = {"n": self.opts.n, "seed": self.opts.seed}
        if self.ckpt is not None:
            prov.update(checkpoint=str(self.ckpt), step=self.state.get("step"), generator=self.generator_name)
        if with_reference and self.real is not None:
            ref = self.reference
            prov["reference"] = {**self.real.describe(), "n": ref.n, "cached": ref.cached,
                                 "skipped": ref.meta.get("skipped", 0)}
        if with_extractor:
            prov["extractor"] = self.extractor.name
            res = self.resolution if self.ckpt is not None else self.require_real().resolution
            prov["resize"] = f"{FT.RESIZE_MODE} {res}->{FT.INPUT_SIZE}"
        return prov

    def metrics(self, bases: list[str]) -> dict[str, float]:
        """Registered metrics (fid, kid, is, prdc) of n generated images against the reference set."""
        out: dict[str, float] = {}
        gen = self.fake.as_dict()
        for base in bases:
            ref = self.reference.as_dict() if M.REGISTRY[base].needs_real else None
            try:
                out.update(M.compute(base, self.opts.n, gen, ref, seed=M.SHUFFLE_SEED, device=self.device))
            except ValueError as e:  # too few images for the metric: the user's numbers, so the user's error
                raise UserError(f"{base}: {e}; raise --n (generated) or --ref-n (real)") from None
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


# ---------------------------------------------------------------- for the training loop
def in_training_metric(G: nn.Module, *, nz: int, metric: str, n: int, data: str, device: str | torch.device,
                       inception_weights: str | None, seed: int = 0) -> dict[str, float]:
    """FID or KID of n samples of G against `data`, e.g. {"kid1k": 0.012, "kid1k/std": 0.001}.

    Lower is better for both; the first key is the headline number (the loop keeps `best` by it). G is put
    in eval mode for sampling and restored; the global RNGs are not touched (z comes from its own seed).
    """
    if metric not in ("fid", "kid"):
        raise UserError(f"eval.metric: {metric!r} is not allowed; choose fid or kid")
    dev = pick_device(device)
    extractor = FT.load_inception(inception_weights or None, device=dev)
    ref = reference(open_real(data), extractor)
    z = FT.latents(n, nz, seed)
    feats = FT.extract(extractor, FT.generate(unwrap(G), z, batch=64, device=dev), n)
    out = M.compute(metric, n, feats.as_dict(), ref.as_dict(), device=dev)
    return {k: v for k, v in out.items() if not k.endswith("/subset_size")}  # the loop logs every key


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

    @property
    def best_key(self) -> str:
        """The score that picks the best checkpoint, e.g. kid1k."""
        return M.metric_name(self.metric, self.n)

    @property
    def lower_is_better(self) -> bool:
        return True  # FID and KID are distances

    def __call__(self, G: nn.Module, device: torch.device) -> dict[str, float]:
        return in_training_metric(G, nz=self.nz, metric=self.metric, n=self.n, data=self.data, device=device,
                                  inception_weights=self.inception_weights, seed=self.seed)


def in_training_evaluator(cfg: Config) -> InTrainingEval | None:
    """The in-training evaluation `cfg.eval` asks for (reference data defaults to `data.path`); None when off."""
    if cfg.eval.every <= 0:
        return None
    return InTrainingEval(metric=cfg.eval.metric, n=cfg.eval.n, data=cfg.eval.data or cfg.data.path,
                          inception_weights=cfg.eval.inception_weights or None, nz=cfg.model.nz,
                          seed=cfg.train.seed)


def to_json(result: dict[str, Any]) -> str:
    """One JSON object (numpy scalars and paths made plain)."""
    def plain(o: Any) -> Any:
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(result, default=plain, sort_keys=False)
