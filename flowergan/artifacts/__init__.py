"""What a run leaves on disk, and reading it back: the run dir, its checkpoints, and export folders.

One door for a generator: `open_generator(path)` takes a run dir (its newest checkpoint), a checkpoint or an export
folder and returns G ready to sample, as `flowergan sample`, `flowergan export`, the Python API
(`flowergan.load_generator`) and the eval package all need it; `open_artifact` adds what the path held (its config,
its state, which G). `verify` checks a run's checkpoints and export folders against their recorded sha256.

Floors: this package reads config, models and generation (sampling helpers) only; training, export writing, the
CLIs and the eval package read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts import export_folder
from flowergan.config import Config
from flowergan.errors import UserError

__all__ = ["Artifact", "open_artifact", "open_generator", "verify"]


@dataclass
class Artifact:
    """A generator and what it came from: a checkpoint (`kind="checkpoint"`) or an export folder (G only)."""

    G: nn.Module
    cfg: Config  # the checkpoint's resolved config; an export folder's [model] section over the defaults
    kind: str  # "checkpoint" or "export"
    path: Path  # the checkpoint directory (a run dir resolved to its newest) or the export folder
    generator_name: str  # "G_ema" or "G"
    state: dict[str, Any] = field(default_factory=dict)  # state.json, or the export's provenance (`source`)

    def require_checkpoint(self, why: str) -> Path:
        """The checkpoint directory; an export folder (G only) is a one-line error saying `why` D is needed."""
        if self.kind != "checkpoint":
            raise UserError(f"{self.path} is an export folder, which holds G only; {why} needs D: pass a checkpoint "
                            "or run dir instead")
        return self.path


def open_artifact(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> Artifact:
    """G in eval mode, ready to sample, from an export folder, a checkpoint or a run dir (its newest checkpoint;
    `ema=False` takes the raw G there instead of G_ema), with the config and state it came with."""
    from flowergan.generation import recompute_bn_stats

    p = Path(path)
    if export_folder.is_export(p):
        held = export_folder.exported_weights(p)
        if not ema and held == "G_ema":
            raise UserError(f"{path} is an export of G_ema only: export the raw G with `flowergan export --raw`")
        G = export_folder.load_export(p, device=device)
        meta = export_folder.read_config(p)
        cfg = export_folder.model_config(p, meta)
        source = meta.get("source")
        return Artifact(G, cfg, "export", p, held, dict(source) if isinstance(source, dict) else {})
    ckpt = ckpt_io.resolve_checkpoint(p)
    G, cfg = ckpt_io.read_generator(ckpt, ema=ema, device=device)
    name = "G_ema" if ema and ckpt_io.has_ema(ckpt) else "G"
    # The loop stores G_ema with recomputed statistics already; recomputing is idempotent and covers raw G.
    if cfg.model.g_sample_bn == "batch":
        recompute_bn_stats(G)
    return Artifact(G, cfg, "checkpoint", ckpt, name, ckpt_io.read_state(ckpt))


def open_generator(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """G in eval mode from an export folder (`flowergan export`), a checkpoint or a run dir (its newest
    checkpoint; `ema=False` takes the raw G instead of G_ema there)."""
    return open_artifact(path, ema=ema, device=device).G


def verify(path: str | Path) -> list[tuple[Path, str | None]]:
    """(artifact, problem or None) for every checkpoint and export folder at `path`: a run dir (its checkpoints,
    `best/` and any export folder inside it), a checkpoints folder, one checkpoint or one export folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist (pass a run dir, a checkpoint or an export folder)")
    if export_folder.is_export(p) or (p / export_folder.CONFIG).is_file():
        return [(p, export_folder.damage(p))]
    if ckpt_io.step_of(p) >= 0 or (p / ckpt_io.STATE).is_file():
        return [(p, ckpt_io.damage(p))]
    found: list[tuple[Path, str | None]] = []
    for root in (p / "checkpoints", p):
        for ckpt in ckpt_io.step_dirs(root):
            found.append((ckpt, ckpt_io.damage(ckpt)))
        if (root / "best").is_dir():
            found.append((root / "best", ckpt_io.damage(root / "best")))
    for config in sorted(p.rglob(export_folder.CONFIG)):
        if export_folder.is_export(config.parent):
            found.append((config.parent, export_folder.damage(config.parent)))
    if not found:
        raise UserError(f"{p} holds no checkpoint and no export folder")
    return found
