"""The `flowergan` command: train, sample, and the `data` group. User errors print one line and exit 2."""

from __future__ import annotations

import sys

import typer

from flowergan.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train DCGANs that generate flowers, from a laptop to a Kubernetes GPU cluster.")


def _register() -> None:
    # Each sub-module adds its own commands; imported here so `flowergan --help` lists them all.
    from flowergan.cli import data, train  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    _register()
    try:
        app(standalone_mode=False)
    except UserError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click's usage errors (bad option, missing argument)
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
