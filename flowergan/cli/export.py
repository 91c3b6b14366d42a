"""`flowergan export`: a self-contained folder with G only (safetensors, config.json, model card; pt2/onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowergan.cli.app import app


@app.command("export")
def export_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="A checkpoint directory, or a run dir (its newest one).")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write (must not exist, unless --force).")],
    # The choices are flowergan.export's FORMATS (a test checks they agree); written out so that `--help` does not
    # import torch.
    formats: Annotated[str, typer.Option("--format", metavar="<safetensors|pt2|onnx>,...",
                                         help="Comma-separated: safetensors (always written), pt2 (torch.export), "
                                              "onnx.")] = "safetensors",
    raw: Annotated[bool, typer.Option("--raw", help="Export the raw G instead of its EMA (G_ema).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    license: Annotated[str, typer.Option("--license", help="The licence the model card declares, as a Hugging Face "
                                                           "Hub id (default: flowergan's own; data with terms of "
                                                           "its own may call for another).")] = "apache-2.0",
) -> None:
    """Export G (its EMA unless --raw) for use outside flowergan; D and optimizer state never leave."""
    from flowergan.export import export

    folder = export(ckpt, out, formats=formats, ema=not raw, force=force, license=license)
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    typer.echo(f"wrote {folder}: {files}")
