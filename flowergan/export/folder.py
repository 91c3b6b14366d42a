"""Write an export folder from a checkpoint (atomically); its format and reading it back are
flowergan/artifacts/export_folder.py."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts.checkpoint import sha256_of
from flowergan.artifacts.export_folder import CARD, CONFIG, FILES, FORMATS, KIND, SAMPLES, WEIGHTS, generator_config
from flowergan.errors import UserError
from flowergan.outputs import check_free, publish, remove, temporary_beside


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """'safetensors,onnx' -> ('safetensors', 'onnx'); safetensors is always written; unknown names are an error."""
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise UserError(f"--format: {', '.join(map(repr, unknown))} not allowed; choose from {', '.join(FORMATS)} "
                        "(comma-separated)")
    return tuple(f for f in FORMATS if f == "safetensors" or f in names)


def _source(ckpt: Path, state: dict[str, Any]) -> dict[str, Any]:
    return {"checkpoint": str(ckpt), "step": state.get("step"), "images_seen": state.get("images_seen"),
            "saved_at": state.get("saved_at"), "trained_with": state.get("version")}


def export(src: str | Path, out: str | Path, *, formats: str | Iterable[str] = ("safetensors",), ema: bool = True,
           force: bool = False, license: str = "apache-2.0") -> Path:
    """Write the export folder `out` for G_ema (or G with ema=False) of a checkpoint or run dir; returns `out`.
    `license` is what the model card declares (a Hugging Face Hub licence id)."""
    from flowergan import visuals
    from flowergan.artifacts import open_generator
    from flowergan.export.card import model_card
    from flowergan.generation import generate

    wanted, out = parse_formats(formats), Path(out)
    ckpt = ckpt_io.resolve_checkpoint(src)
    check_free(out, force)
    cfg, state = ckpt_io.checkpoint_config(ckpt), ckpt_io.read_state(ckpt)
    weights = "G_ema" if ema and ckpt_io.has_ema(ckpt) else "G"
    # Recomputed BatchNorm statistics for model.g_sample_bn = batch, as training drew samples: the export then
    # needs no special sampling mode.
    G = open_generator(ckpt, ema=weights == "G_ema")
    meta = generator_config(cfg.to_dict()["model"], weights=weights, source=_source(ckpt, state), formats=wanted)
    tmp = temporary_beside(out, directory=True)
    try:
        save_file({k: v.detach().contiguous() for k, v in G.state_dict().items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt", "kind": KIND})
        if "pt2" in wanted or "onnx" in wanted:
            from flowergan.export import graphs

            if "pt2" in wanted:
                graphs.write_pt2(G, tmp / FILES["pt2"])
            if "onnx" in wanted:
                graphs.write_onnx(G, tmp / FILES["onnx"])
        meta["sha256"] = {FILES[f]: sha256_of(tmp / FILES[f]) for f in wanted}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
        # The card's picture: the exported G itself, on the z `flowergan.generate(G, 64, seed=0)` draws.
        visuals.save_png(visuals.to_grid(generate(G, 64, seed=0).float() / 127.5 - 1.0), tmp / SAMPLES)
        (tmp / CARD).write_text(model_card(meta, state, cfg, license, samples=SAMPLES))
        publish(tmp, out)
    except BaseException:
        remove(tmp)
        raise
    return out
