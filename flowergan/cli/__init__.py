"""The `flowergan` command: train, sample, export, verify, the `data` group. User errors: one line, exit 2."""

from __future__ import annotations

from flowergan.cli.app import app
from flowergan.console import run_app

__all__ = ["app", "main"]


def _register() -> None:
    # Each sub-module adds its own commands to `app` (cli/app.py); imported here so `flowergan --help` lists them.
    from flowergan.cli import data, export, sample, train, tune, verify  # noqa: F401


def main() -> None:
    """Console-script entry point (also `python -m flowergan`)."""
    _register()
    run_app(app, "flowergan")
