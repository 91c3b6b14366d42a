"""`flowergan verify`: `flowergan data verify`'s twin for what training leaves (checkpoints, export folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowergan.cli.app import app
from flowergan.errors import UserError


@app.command("verify")
def verify_command(
    path: Annotated[Path, typer.Argument(help="A run dir (its checkpoints, best/ and export folders), one checkpoint "
                                              "or one export folder.")],
) -> None:
    """Check every checkpoint and export folder against its recorded sha256; exit non-zero naming each damaged one."""
    from flowergan.artifacts import verify

    results = verify(path)
    for artifact, problem in results:
        typer.echo(f"{'ok' if problem is None else 'DAMAGED'}: {artifact}" + (f": {problem}" if problem else ""))
    damaged = [a for a, problem in results if problem is not None]
    if damaged:
        raise UserError(f"{len(damaged)} of {len(results)} damaged: {', '.join(a.name for a in damaged)}")
