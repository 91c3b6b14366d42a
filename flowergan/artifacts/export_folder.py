"""Write an export folder from a checkpoint (atomically) and load its G back."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import flowergan
from flowergan.config import ConfigError, from_dict
from flowergan.errors import UserError
from flowergan.models import Generator, build_models
from flowergan.outputs import check_free, publish, remove, temporary_beside

FORMATS = ("safetensors", "pt2", "onnx")
KIND, KIND_VERSION = "flowergan-generator", 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
FILES = {"safetensors": WEIGHTS, "pt2": "generator.pt2", "onnx": "generator.onnx"}


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """'safetensors,onnx' -> ('safetensors', 'onnx'); safetensors is always written; unknown names are an error."""
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise UserError(f"--format: {', '.join(map(repr, unknown))} not allowed; choose from {', '.join(FORMATS)} "
                        "(comma-separated)")
    return tuple(f for f in FORMATS if f == "safetensors" or f in names)


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
    }


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


def exported_weights(folder: Path) -> str:
    """Which network an export folder holds: "G_ema" or "G"."""
    return str(json.loads((folder / CONFIG).read_text()).get("weights", "G_ema"))


def load_export(folder: Path, *, device: str | torch.device = "cpu") -> Generator:
    """G of an export folder in eval mode, rebuilt from config.json's model section."""
    try:
        meta = json.loads((folder / CONFIG).read_text())
        cfg = from_dict({"model": meta["model"]}, source=str(folder / CONFIG))
    except (OSError, ValueError, KeyError, TypeError) as e:
        detail = e if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise UserError(f"{folder / CONFIG}: not a flowergan export config ({detail})") from None
    G, _ = build_models(cfg.model)
    try:
        G.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except Exception as e:  # safetensors' own errors for corrupt files, RuntimeError for a mismatch
        raise UserError(f"{folder / WEIGHTS}: does not fit the model in {CONFIG} ({str(e).splitlines()[0]})"
                        ) from None
    return G.to(device).eval()


def _source(ckpt: Path, state: dict[str, Any]) -> dict[str, Any]:
    return {"checkpoint": str(ckpt), "step": state.get("step"), "images_seen": state.get("images_seen"),
            "saved_at": state.get("saved_at"), "trained_with": state.get("version")}


def export(src: str | Path, out: str | Path, *, formats: str | Iterable[str] = ("safetensors",), ema: bool = True,
           force: bool = False) -> Path:
    """Write the export folder `out` for G_ema (or G with ema=False) of a checkpoint or run dir; returns `out`."""
    from flowergan.export.card import model_card
    from flowergan.train.checkpoint import WEIGHTS as CKPT_WEIGHTS
    from flowergan.train.checkpoint import checkpoint_config, load_generator, read_state, resolve_checkpoint

    wanted, out = parse_formats(formats), Path(out)
    ckpt = resolve_checkpoint(src)
    check_free(out, force)
    cfg, state = checkpoint_config(ckpt), read_state(ckpt)
    with safe_open(str(ckpt / CKPT_WEIGHTS), "pt") as f:
        weights = "G_ema" if ema and any(k.startswith("G_ema.") for k in f.keys()) else "G"
    G, _ = load_generator(ckpt, ema=weights == "G_ema")
    if cfg.model.g_sample_bn == "batch":
        from flowergan.generation import recompute_bn_stats

        recompute_bn_stats(G)  # samples as training drew them; the export then needs no special sampling mode
    meta = generator_config(cfg.to_dict()["model"], weights=weights, source=_source(ckpt, state), formats=wanted)
    tmp = temporary_beside(out, directory=True)
    try:
        save_file({k: v.detach().contiguous() for k, v in G.state_dict().items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt", "kind": KIND})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / CARD).write_text(model_card(meta, state, cfg))
        if "pt2" in wanted or "onnx" in wanted:
            from flowergan.export import graphs

            if "pt2" in wanted:
                graphs.write_pt2(G, tmp / FILES["pt2"])
            if "onnx" in wanted:
                graphs.write_onnx(G, tmp / FILES["onnx"])
        publish(tmp, out)
    except BaseException:
        remove(tmp)
        raise
    return out
