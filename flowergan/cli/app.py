"""The `flowergan` Typer app that every command module adds its commands to (cli/__init__.py imports them all)."""

from __future__ import annotations

import typer

from flowergan import __version__
from flowergan.console import version_option

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster.")


@app.callback()
def _root(version: bool = version_option("flowergan", __version__)) -> None:
    """Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster."""
