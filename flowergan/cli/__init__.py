"""The `flowergan` command: train, sample, export, verify, the `data` group. User errors: one line, exit 2."""

from __future__ import annotations

import typer

from flowergan import __version__
from flowergan.console import run_app, version_option

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster.")


@app.callback()
def _root(version: bool = version_option("flowergan", __version__)) -> None:
    """Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster."""


def _register() -> None:
    # Each sub-module adds its own commands; imported here so `flowergan --help` lists them all.
    from flowergan.cli import data, export, sample, train, tune, verify  # noqa: F401


def main() -> None:
    """Console-script entry point (also `python -m flowergan`)."""
    _register()
    run_app(app, "flowergan")
