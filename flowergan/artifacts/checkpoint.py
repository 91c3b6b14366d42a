"""The checkpoint format, and reading and checking it: safetensors weights, tensors-only torch.save, JSON, sha256.

A checkpoint is a directory `step-00001000/` holding
  models.safetensors  G.*, D.*, G_ema.* (state dicts with BatchNorm buffers)
  optim.pt            both optimizers, the AMP scaler and the RNG states of every rank (a list in rank order):
                      tensors and numbers only, read back with torch.load(weights_only=True)
  state.json          step, images seen, best score so far, world size, the resolved config, package version,
                      metrics, and `"checksums": "SHA256SUMS"`
  SHA256SUMS          the sha256 of the three files above, in `sha256sum` format (`sha256sum -c SHA256SUMS`)
It is written to a temporary directory and renamed into place, so a crash never leaves half of one; what happens
to it afterwards (a truncated copy, a flipped bit, a lost file) shows as a mismatch with SHA256SUMS, and every
load checks it first. Checkpoints written before SHA256SUMS existed (state.json without "checksums") still load,
unverified. Training's `CheckpointManager` (flowergan/train/state/checkpoints.py) decides when to write, keep,
roll back and resume; this module knows only the files.
"""

from __future__ import annotations

import hashlib
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

WEIGHTS, OPTIM, STATE, SUMS = "models.safetensors", "optim.pt", "state.json", "SHA256SUMS"
FILES = (WEIGHTS, OPTIM, STATE)
PREFIX = "step-"
NETS = ("G", "D", "G_ema")


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


def save_state(root: Path, sd: dict[str, Any], rngs: list[dict[str, torch.Tensor]], meta: dict[str, Any]) -> Path:
    """Write a `TrainState.state_dict()` as a checkpoint; `rngs` holds every rank's RNG state in rank order."""
    best = sd["best"] if math.isfinite(sd["best"]) else None  # JSON has no infinity
    optim = {"opt_g": sd["opt_g"], "opt_d": sd["opt_d"], "scaler": sd["scaler"], "rng": rngs}
    state = {**meta, "images_seen": sd["images_seen"], "best": best, "world_size": len(rngs)}
    return _write(root, sd["step"], {k: sd[k] for k in NETS if k in sd}, optim, state)


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (disk speed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checksums": SUMS}
        (tmp / STATE).write_text(json.dumps(meta, indent=1))
        (tmp / SUMS).write_text("".join(f"{sha256_of(tmp / name)}  {name}\n" for name in FILES))
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


def step_dirs(root: Path) -> list[Path]:
    """Every checkpoint directory under `root`, whole or damaged, oldest first (temporary directories skipped)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if step_of(p) >= 0 and p.is_dir()), key=step_of)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root` (those with a state.json), oldest first; `damage` says if they are
    intact."""
    return [p for p in step_dirs(root) if (p / STATE).is_file()]


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (and stale temporary directories); never `best`."""
    for old in step_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def mark_best(ckpt: Path) -> Path:
    """Copy a checkpoint to `best/` next to it, atomically."""
    best = ckpt.parent / "best"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=ckpt.parent))
    shutil.copytree(ckpt, tmp, dirs_exist_ok=True)
    return swap_in(tmp, best)


def has_checksums(ckpt: Path) -> bool:
    """Whether the checkpoint was written with a SHA256SUMS record (every one since the record exists)."""
    if (ckpt / SUMS).is_file():
        return True
    try:
        return "checksums" in json.loads((ckpt / STATE).read_text())
    except (OSError, ValueError):
        return False


def damage(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint's files (missing, truncated or altered, unexpected), or None when every file
    matches its recorded sha256; a checkpoint from before the record is checked for its files only."""
    if not ckpt.is_dir():
        return "not a directory"
    present = {p.name for p in ckpt.iterdir() if not p.name.startswith(".")}
    if STATE not in present:
        return f"{STATE} is missing"
    if not has_checksums(ckpt):  # the layout before SHA256SUMS: nothing to compare with
        lost = [name for name in FILES if name not in present]
        return f"{lost[0]} is missing" if lost else None
    try:
        lines = (ckpt / SUMS).read_text().splitlines()
        record = {name: digest for digest, name in (line.split("  ", 1) for line in lines if line)}
    except FileNotFoundError:
        return f"{SUMS} is missing"
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{SUMS} is unreadable"
    for name in FILES:
        if name not in record:
            return f"{SUMS} does not list {name}"
        if name not in present:
            return f"{name} is missing"
        if sha256_of(ckpt / name) != record[name]:
            return f"{name} does not match its sha256 (truncated or altered)"
    extra = sorted(present - set(record) - {SUMS})
    if extra:
        return f"unexpected file {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


def check(ckpt: Path) -> None:
    """Raise a one-line UserError when `damage` finds something wrong with the checkpoint."""
    problem = damage(ckpt)
    if problem is not None:
        raise UserError(f"checkpoint {ckpt} is damaged: {problem}")


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


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every network's weights of a checkpoint (checked against SHA256SUMS first)."""
    check(ckpt)
    try:
        return load_file(str(ckpt / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{ckpt / WEIGHTS}: cannot read weights ({e})") from None


def read_optim(ckpt: Path) -> dict[str, Any]:
    """optim.pt: both optimizers, the AMP scaler, the RNG states (tensors and numbers only)."""
    try:
        return torch.load(ckpt / OPTIM, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{ckpt / OPTIM}: cannot read optimizer state ({e})") from None


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


def read_generator(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
                   ) -> tuple[Generator, Config]:
    """G (its EMA by default) of a checkpoint or a run dir's newest checkpoint as stored, in eval mode, with the
    checkpoint's config (`flowergan.artifacts.open_generator` is the sampling-ready G of any artifact)."""
    ckpt = resolve_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    G, _ = build_models(cfg.model)
    tensors = load_weights(ckpt)
    name = "G_ema" if ema and any(k.startswith("G_ema.") for k in tensors) else "G"
    load_into(G, tensors, name, ckpt, cfg)
    return G.to(device).eval(), cfg


def read_discriminator(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Discriminator, Config]:
    """D of a checkpoint or a run dir's newest checkpoint, in eval mode."""
    ckpt = resolve_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    _, D = build_models(cfg.model)
    load_into(D, load_weights(ckpt), "D", ckpt, cfg)
    return D.to(device).eval(), cfg


def has_ema(ckpt: Path) -> bool:
    """Whether the checkpoint holds G_ema (the run kept an EMA of G); reads the weight names only."""
    from safetensors import safe_open

    with safe_open(str(ckpt / WEIGHTS), framework="pt") as f:
        return any(k.startswith("G_ema.") for k in f.keys())
