"""The `flowergan` Typer app that every command module adds its commands to (cli/__init__.py imports them all)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from flowergan import __version__
from flowergan.console import version_option

# `flowergan --help` lists the commands in the order a run uses them (typer lists commands in the order they were
# made, and sub-groups such as `data` after every command); the rest follow in that order.
WORKFLOW = ("data", "train", "sample", "export", "verify", "tune", "config")


class WorkflowOrder(TyperGroup):
    """The `flowergan` group, listing its commands in WORKFLOW order."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


app = typer.Typer(cls=WorkflowOrder, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster.")


@app.callback()
def _root(version: bool = version_option("flowergan", __version__)) -> None:
    """Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster."""
