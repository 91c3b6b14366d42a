"""How both console scripts (flowergan, flowergan-eval) run a typer app: a user error is one line and exit 2."""

from __future__ import annotations

import sys
from typing import Any

import typer

from flowergan.errors import UserError


def version_option(prog: str, version: str) -> Any:
    """A `--version` option for an app's callback: prints `PROG VERSION` and exits before anything else runs."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {version}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")


def run_app(app: typer.Typer, prog_name: str) -> None:
    """Run `app` as the console script `prog_name` with flowergan's error conventions.

    The name is fixed (not taken from argv[0]) so that shell completion's `_PROG_NAME_COMPLETE` variable and
    `--install-completion` mean the same under `python -m flowergan`."""
    try:
        app(standalone_mode=False, prog_name=prog_name)
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
    except Exception as e:
        # Usage errors (bad option, missing argument, a value outside its choices) from click, or the copy of
        # click that newer typers vendor: one line naming the option, like every other user error.
        if hasattr(e, "exit_code") and hasattr(e, "format_message"):
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.secho(f"error: {e.format_message()}{where}", fg="red", err=True)
            sys.exit(e.exit_code)
        raise
