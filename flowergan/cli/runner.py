"""How both console scripts run a typer app: user errors are one line and exit 2, never a traceback."""

from __future__ import annotations

import sys

import typer

from flowergan.errors import UserError


def run_app(app: typer.Typer) -> None:
    """Run `app` as a console script with flowergan's error conventions."""
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
    except Exception as e:
        # Usage errors (bad option, missing argument) from click, or the copy of click that newer typers vendor.
        if hasattr(e, "show") and hasattr(e, "exit_code") and hasattr(e, "format_message"):
            e.show()
            sys.exit(e.exit_code)
        raise
