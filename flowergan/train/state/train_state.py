"""Everything that decides a run's future, in one object: the nets, both optimizers, the AMP scaler, the step,
images seen, the best evaluation score so far and this rank's RNG states.

`state_dict()` / `load_state_dict()` are the one shape of it: the in-memory rollback snapshot is a deep copy of
it, a checkpoint is it (with every rank's RNG state gathered to rank 0), and resuming loads it back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flowergan.config import Config
from flowergan.models import build_models
from flowergan.train.gan.step import Precision, resolve_amp
from flowergan.train.state import rng

OPTIMIZERS = ("opt_g", "opt_d")


@dataclass
class TrainState:
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    precision: Precision
    device: torch.device
    step: int = 0
    images_seen: int = 0
    best: float = math.inf  # the selecting eval score so far (see train/evaluation.py)

    @property
    def nets(self) -> dict[str, nn.Module]:
        """The plain (unwrapped) networks by checkpoint name: G, D and G_ema when kept."""
        return {"G": self.G, "D": self.D, **({"G_ema": self.G_ema} if self.G_ema is not None else {})}

    def state_dict(self) -> dict[str, Any]:
        """The full state as tensors and numbers (references, not copies: see `snapshot`)."""
        return {**{k: m.state_dict() for k, m in self.nets.items()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.precision.scaler.state_dict(),
                "step": self.step, "images_seen": self.images_seen, "best": self.best,
                "rng": rng.capture(self.device)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; `sd["rng"] = None` keeps the current RNG streams."""
        for name, module in self.nets.items():
            module.load_state_dict(sd[name], strict=True)
        _load_optimizer(self.opt_g, sd["opt_g"])
        _load_optimizer(self.opt_d, sd["opt_d"])
        if sd["scaler"] or not self.precision.scaler.is_enabled():
            self.precision.scaler.load_state_dict(sd["scaler"])
        # else: a run without a scaler (amp off or bf16) saved an empty state; an fp16 resume starts a fresh one.
        self.step, self.images_seen, self.best = int(sd["step"]), int(sd["images_seen"]), float(sd["best"])
        if sd.get("rng") is not None:
            rng.restore(sd["rng"], self.device)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the state, kept in memory for a rollback without disk."""
        return copy.deepcopy(self.state_dict())


def _load_optimizer(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """`opt.load_state_dict(sd)`, with each per-parameter state tensor then laid out as its parameter.

    load_state_dict keeps the saved strides: a NCHW checkpoint (the CPU's) resumed with NHWC parameters (a GPU's
    `channels_last = "auto"`, or the flag toggled) would leave Adam's moments NCHW, which CUDA's fused Adam refuses
    and the other kernels run slowly.
    """
    opt.load_state_dict(sd)
    for p, entries in opt.state.items():
        for key, value in entries.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                entries[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def new_state(cfg: Config, device: torch.device, memory_format: torch.memory_format, best: float) -> TrainState:
    """Fresh nets (the same init on every rank: seeded), optimizers and AMP scaler on `device`."""
    tc, oc = cfg.train, cfg.optim
    torch.manual_seed(tc.seed)
    G, D = build_models(cfg.model)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if tc.ema else None
    for m in (G, D, G_ema):
        if m is not None:
            m.to(device).to(memory_format=memory_format)
    fused = oc.fused == "on" or (oc.fused == "auto" and device.type == "cuda")
    # Fused kernels on CUDA; elsewhere the multi-tensor (foreach) path, which PyTorch enables only on CUDA.
    adam: dict[str, Any] = {"betas": (oc.beta1, oc.beta2), **({"fused": True} if fused else {"foreach": True})}
    opt_g = torch.optim.Adam(G.parameters(), lr=oc.lr_g, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=oc.lr_d, **adam)
    precision = Precision(device, *resolve_amp(tc.amp, device))
    return TrainState(G, D, G_ema, opt_g, opt_d, precision, device, best=best)
