"""Full-state checkpoints that never unpickle: safetensors weights, tensors-only torch.save, JSON.

A checkpoint is a directory `step-00001000/` holding
  models.safetensors  G.*, D.*, G_ema.* (state dicts with BatchNorm buffers)
  optim.pt            both optimizers, the AMP scaler and RNG states: tensors and numbers only,
                      read back with torch.load(weights_only=True)
  state.json          step, images seen, the resolved config, package version, metrics
It is written to a temporary directory and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import flowergan
from flowergan.config import Config, ConfigError, from_dict
from flowergan.errors import UserError
from flowergan.models import Discriminator, Generator, build_models

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


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and plain numbers."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # a tuple, not the dict form
    state["numpy"] = {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    version, internal, gauss_next = random.getstate()
    state["python"] = {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def _contiguous(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(root: Path, *, step: int, models: dict[str, nn.Module], optim: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    """Write `root/step-XXXXXXXX` atomically and return it. `models` maps G/D/G_ema to unwrapped modules."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        tensors: dict[str, torch.Tensor] = {}
        for name, module in models.items():
            tensors.update(_contiguous(module.state_dict(), f"{name}."))
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
    if best.exists():
        old = best.with_name(f".tmp-old-best-{os.getpid()}")
        os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, best)
    return best


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


def load_state(ckpt: Path, cfg: Config, models: dict[str, nn.Module], optimizers: dict[str, Any],
               scaler: torch.amp.GradScaler, device: torch.device) -> dict[str, Any]:
    """Restore weights, optimizers, scaler and RNG from `ckpt` into the given objects; return state.json."""
    tensors = _load_weights(ckpt)
    for name, module in models.items():
        load_into(module, tensors, name, ckpt, cfg)
    try:
        extra = torch.load(ckpt / OPTIM, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{ckpt / OPTIM}: cannot read optimizer state ({e})") from None
    for name, opt in optimizers.items():
        opt.load_state_dict(extra[name])
    scaler.load_state_dict(extra["scaler"])
    set_rng_state(extra["rng"])
    return read_state(ckpt)


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
