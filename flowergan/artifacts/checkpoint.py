"""Full-state checkpoints that never unpickle: safetensors weights, tensors-only torch.save, JSON.

A checkpoint is a directory `step-00001000/` holding
  models.safetensors  G.*, D.*, G_ema.* (state dicts with BatchNorm buffers)
  optim.pt            both optimizers, the AMP scaler and the RNG states of every rank (a list in rank order):
                      tensors and numbers only, read back with torch.load(weights_only=True)
  state.json          step, images seen, best score so far, world size, the resolved config, package version,
                      metrics
It is written to a temporary directory and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import flowergan
from flowergan.config import Config, ConfigError, from_dict
from flowergan.errors import UserError
from flowergan.models import Discriminator, Generator, build_models
from flowergan.outputs import swap_in
from flowergan.train import rng
from flowergan.train.rng import RngState
from flowergan.train.state import NETS, TrainState

WEIGHTS, OPTIM, STATE = "models.safetensors", "optim.pt", "state.json"
PREFIX = "step-"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def step_of(path: str | os.PathLike | None) -> int:
    """The step in a checkpoint directory's name (`.../step-00001000` -> 1000, local or a URL); -1 for None or
    any other name."""
    name = str(path or "").rstrip("/").rsplit("/", 1)[-1]
    digits = name.removeprefix(PREFIX)
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else -1


def _contiguous(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(root: Path, *, step: int, models: dict[str, nn.Module], optim: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    """Write `root/step-XXXXXXXX` atomically and return it. `models` maps G/D/G_ema to unwrapped modules."""
    return _write(root, step, {k: m.state_dict() for k, m in models.items()}, optim, state)


def save_state(root: Path, sd: dict[str, Any], rngs: list[RngState], meta: dict[str, Any]) -> Path:
    """Write a `TrainState.state_dict()` as a checkpoint; `rngs` holds every rank's RNG state in rank order."""
    best = sd["best"] if math.isfinite(sd["best"]) else None  # JSON has no infinity
    optim = {"opt_g": sd["opt_g"], "opt_d": sd["opt_d"], "scaler": sd["scaler"], "rng": rngs}
    state = {**meta, "images_seen": sd["images_seen"], "best": best, "world_size": len(rngs)}
    return _write(root, sd["step"], {k: sd[k] for k in NETS if k in sd}, optim, state)


def _write(root: Path, step: int, nets: dict[str, dict[str, torch.Tensor]], optim: dict[str, Any],
           state: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        tensors: dict[str, torch.Tensor] = {}
        for name, sd in nets.items():
            tensors.update(_contiguous(sd, f"{name}."))
        save_file(tensors, str(tmp / WEIGHTS))
        torch.save(optim, tmp / OPTIM)
        meta = {**state, "step": step, "version": flowergan.__version__, "torch": torch.__version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / STATE).write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary directories are skipped)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p) >= 0 and (p / STATE).is_file()]
    return sorted(found, key=step_of)


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (and stale temporary directories); never `best`."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def mark_best(ckpt: Path) -> Path:
    """Copy a checkpoint to `best/` next to it, atomically."""
    best = ckpt.parent / "best"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=ckpt.parent))
    shutil.copytree(ckpt, tmp, dirs_exist_ok=True)
    return swap_in(tmp, best)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the newest one of a run directory (or its `checkpoints/`)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist (pass a run directory or a checkpoint directory)")
    if (p / STATE).is_file():
        if not (p / WEIGHTS).is_file():
            raise UserError(f"checkpoint {p} has no {WEIGHTS}: it is incomplete")
        return p
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise UserError(f"{p} holds no checkpoint (expected {p}/checkpoints/{PREFIX}NNNNNNNN/{STATE}); "
                    "train first with `flowergan train --config ...`")


def read_state(ckpt: Path) -> dict[str, Any]:
    """state.json of a checkpoint."""
    try:
        return json.loads((ckpt / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{ckpt / STATE}: unreadable checkpoint state ({e})") from None


def checkpoint_config(ckpt: Path) -> Config:
    """The resolved config stored in a checkpoint."""
    try:
        return from_dict(read_state(ckpt)["config"], source=str(ckpt / STATE))
    except (KeyError, ConfigError) as e:
        raise UserError(f"{ckpt / STATE}: config missing or invalid ({e})") from None


def _load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{ckpt / WEIGHTS}: cannot read weights ({e})") from None


def _subset(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], name: str, ckpt: Path, cfg: Config) -> None:
    """Load one network's weights; an architecture mismatch is a one-line error naming the differences."""
    sd = _subset(tensors, name)
    if not sd:
        raise UserError(f"{ckpt / WEIGHTS} has no {name} weights")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError:
        saved = checkpoint_config(ckpt).model
        diff = [f"model.{k}={getattr(saved, k)!r} (config says {getattr(cfg.model, k)!r})"
                for k in vars(saved) if getattr(saved, k) != getattr(cfg.model, k)]
        detail = "; ".join(diff) or "the same model section but different tensors"
        raise UserError(f"checkpoint {ckpt} was made for a different architecture: {detail}") from None


def load_state(ckpt: Path, cfg: Config, state: TrainState, rank: int, world: int) -> str | None:
    """Load `ckpt` into `state` (this rank's own RNG state when the world size is the one it was saved with).
    Returns None, or one line saying the noise streams must be re-derived (another world size, or a checkpoint
    without RNG states): the caller reseeds and continues."""
    tensors = _load_weights(ckpt)
    for name, module in state.nets.items():
        load_into(module, tensors, name, ckpt, cfg)  # an architecture mismatch is one line, before anything else
    try:
        extra = torch.load(ckpt / OPTIM, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{ckpt / OPTIM}: cannot read optimizer state ({e})") from None
    meta = read_state(ckpt)
    rngs = extra.get("rng")
    rngs = rngs if isinstance(rngs, list) else [rng.from_legacy(rngs)] if isinstance(rngs, dict) else []
    saved_best = meta.get("best")
    sd = {**{k: state.nets[k].state_dict() for k in state.nets}, "opt_g": extra["opt_g"], "opt_d": extra["opt_d"],
          "scaler": extra["scaler"], "step": meta["step"], "images_seen": meta["images_seen"],
          "best": state.best if saved_best is None else saved_best,
          "rng": rngs[rank] if len(rngs) == world else None}
    state.load_state_dict(sd)
    if len(rngs) == world:
        return None
    saved = f"{len(rngs)} rank(s)" if rngs else "a run that kept no RNG states"
    return (f"{ckpt.name} was saved by {saved} and resumes with {world}: noise streams are re-derived from "
            "train.seed and the step, so the run continues but is not bit-identical to an uninterrupted one")


def load_generator(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
                   ) -> tuple[Generator, Config]:
    """G (its EMA by default) of a checkpoint or a run dir's newest checkpoint, in eval mode."""
    ckpt = resolve_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    G, _ = build_models(cfg.model)
    tensors = _load_weights(ckpt)
    name = "G_ema" if ema and any(k.startswith("G_ema.") for k in tensors) else "G"
    load_into(G, tensors, name, ckpt, cfg)
    return G.to(device).eval(), cfg


def load_discriminator(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Discriminator, Config]:
    """D of a checkpoint or a run dir's newest checkpoint, in eval mode."""
    ckpt = resolve_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    _, D = build_models(cfg.model)
    load_into(D, _load_weights(ckpt), "D", ckpt, cfg)
    return D.to(device).eval(), cfg


def has_ema(ckpt: Path) -> bool:
    """Whether the checkpoint holds G_ema (the run kept an EMA of G); reads the weight names only."""
    from safetensors import safe_open

    with safe_open(str(ckpt / "models.safetensors"), framework="pt") as f:
        return any(k.startswith("G_ema.") for k in f.keys())
