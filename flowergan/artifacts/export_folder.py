"""The export folder's format (what `flowergan export` writes) and reading it back.

  model.safetensors  G's state dict with plain keys (G_ema's weights unless --raw)
  config.json        the whole [model] section, z and output conventions, provenance, and the sha256 of the
                     weight and graph files (`"sha256"`; folders exported before it have none)
  README.md          a model card whose YAML front matter the Hugging Face Hub reads (not hashed: people edit it)
  samples.png        64 samples of G (seed 0), shown in the card (not hashed: a picture, remade from the weights)
  generator.pt2      on request: torch.export program, dynamic batch
  generator.onnx     on request: ONNX, dynamic batch
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import flowergan
from flowergan.artifacts.checkpoint import sha256_of
from flowergan.config import Config, ConfigError, from_dict
from flowergan.errors import UserError
from flowergan.models import Generator, build_models

FORMATS = ("safetensors", "pt2", "onnx")
KIND, KIND_VERSION = "flowergan-generator", 1
WEIGHTS, CONFIG, CARD, SAMPLES = "model.safetensors", "config.json", "README.md", "samples.png"
FILES = {"safetensors": WEIGHTS, "pt2": "generator.pt2", "onnx": "generator.onnx"}


def generator_config(model: dict[str, Any], *, weights: str, source: dict[str, Any],
                     formats: tuple[str, ...]) -> dict[str, Any]:
    """config.json: how to rebuild G (the whole [model] section) and how to read what it makes."""
    nz, res = int(model["nz"]), int(model["resolution"])
    return {
        "kind": KIND, "kind_version": KIND_VERSION, "flowergan_version": flowergan.__version__,
        "architecture": "DCGAN generator (flowergan.models.Generator, built by flowergan.models.build_models)",
        "weights": weights, "model": model, "nz": nz, "resolution": res,
        "input": {"name": "z", "shape": ["batch", nz], "dtype": "float32", "distribution": "standard normal"},
        "output": {"name": "images", "shape": ["batch", 3, res, res], "dtype": "float32", "layout": "NCHW",
                   "channel_order": "RGB", "range": [-1.0, 1.0],
                   "to_uint8": "round((x + 1) * 127.5), clamped to [0, 255] (flowergan.visuals.to_uint8)"},
        "batchnorm": batchnorm_note(str(model.get("g_sample_bn", "eval"))),
        "files": {f: FILES[f] for f in formats},
        "source": source,
        **_class_input(model),
    }


def _class_input(model: dict[str, Any]) -> dict[str, Any]:
    """A conditional G's second input, y, and its class names in label order (nothing for an unconditional G)."""
    if model.get("conditional", "none") == "none":
        return {}
    names = [n.strip() for n in str(model.get("class_names", "")).split(",") if n.strip()]
    return {"classes": names, "class_input": {"name": "y", "shape": ["batch"], "dtype": "int64",
                                              "range": [0, int(model["num_classes"]) - 1],
                                              "meaning": "the class of each image: an index into `classes`"}}


def batchnorm_note(g_sample_bn: str) -> str:
    """How the exported G's BatchNorm statistics were made (`model.g_sample_bn`); G always runs in eval mode."""
    if g_sample_bn == "batch":
        return ("eval mode: running statistics recomputed from G's own batches of z at export "
                "(model.g_sample_bn = batch), saved with the weights")
    return "eval mode: running statistics saved with the weights"


def is_export(path: Path) -> bool:
    """True for a folder `flowergan export` wrote (config.json of kind flowergan-generator)."""
    try:
        return (path / WEIGHTS).is_file() and json.loads((path / CONFIG).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of an export folder."""
    try:
        meta = json.loads((folder / CONFIG).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / CONFIG}: not a flowergan export config ({type(e).__name__}: {e})") from None


def model_config(folder: Path, meta: dict[str, Any]) -> Config:
    """The export's [model] section over the defaults of every other section."""
    try:
        return from_dict({"model": meta["model"]}, source=str(folder / CONFIG))
    except (KeyError, TypeError, ConfigError) as e:
        detail = e if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise UserError(f"{folder / CONFIG}: not a flowergan export config ({detail})") from None


def exported_weights(folder: Path) -> str:
    """Which network an export folder holds: "G_ema" or "G"."""
    return str(json.loads((folder / CONFIG).read_text()).get("weights", "G_ema"))


def damage(folder: Path) -> str | None:
    """What is wrong with an export folder's files (missing, or not matching config.json's sha256), or None."""
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        return f"{CONFIG} is unreadable ({type(e).__name__})"
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        return f"{CONFIG} is not a flowergan export config"
    record = meta.get("sha256") or {}
    for name in {WEIGHTS, *record}:
        if not (folder / name).is_file():
            return f"{name} is missing"
        if name in record and sha256_of(folder / name) != record[name]:
            return f"{name} does not match its sha256 (truncated or altered)"
    return None


def load_export(folder: Path, *, device: str | torch.device = "cpu") -> Generator:
    """G of an export folder in eval mode, rebuilt from config.json's model section (the weights checked against
    their recorded sha256 first)."""
    try:
        meta = json.loads((folder / CONFIG).read_text())
        cfg = from_dict({"model": meta["model"]}, source=str(folder / CONFIG))
    except (OSError, ValueError, KeyError, TypeError) as e:
        detail = e if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise UserError(f"{folder / CONFIG}: not a flowergan export config ({detail})") from None
    problem = damage(folder)
    if problem is not None and problem.startswith(f"{WEIGHTS} does not match"):  # the graphs are not needed here
        raise UserError(f"export folder {folder} is damaged: {problem}")
    G, _ = build_models(cfg.model)
    try:
        G.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except Exception as e:  # safetensors' own errors for corrupt files, RuntimeError for a mismatch
        raise UserError(f"{folder / WEIGHTS}: does not fit the model in {CONFIG} ({str(e).splitlines()[0]})"
                        ) from None
    return G.to(device).eval()
