"""How both console scripts (flowergan, flowergan-eval) run a typer app: a user error is one line and exit 2, and
a flag's help shows no value it does not take."""

from __future__ import annotations

import sys
from typing import Any

import typer
import typer.core

from flowergan.errors import UserError


def _flags_show_no_type() -> None:
    """typer >= 0.2x's rich help prints a type after every option, flags included (`--dry-run <bool>`), which reads
    as if the flag took a value (`--dry-run true` then fails). Its plain help already skips flags
    (`TyperOption.get_help_record`: `if not self.is_flag`); make the rich help do the same. Older typers, which have
    no such method, print nothing there and are left alone."""
    show = getattr(typer.core.TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_flowergan_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else show(self, ctx)

    display_type_rich._flowergan_flags = True  # type: ignore[attr-defined]
    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()  # on import: both apps import this module before building any help


def version_option(prog: str, version: str) -> Any:
    """A `--version` option for an app's callback: prints `PROG VERSION` and exits before anything else runs."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {version}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")


# typer checks values with pydantic; its error types as the words flowergan's own checks use.
BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
          "less_than": ("<", "lt")}


def usage_line(e: Exception) -> str:
    """A usage error from click (or the click newer typers vendor) in the form of every other user error,
    `--n 0: must be >= 1`, where the option and the value are known; click's own sentence otherwise."""
    param, cause = getattr(e, "param", None), e.__cause__
    errors = cause.errors() if cause is not None and hasattr(cause, "errors") else []
    opts = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    if not (opts and errors and "input" in errors[0]):
        return str(e.format_message()).replace("Value error, ", "")  # type: ignore[attr-defined]
    first = errors[0]
    kind, ctx = first.get("type", ""), first.get("ctx") or {}
    if kind in BOUNDS and BOUNDS[kind][1] in ctx:
        reason = f"must be {BOUNDS[kind][0]} {ctx[BOUNDS[kind][1]]}"
    elif kind == "value_error" and "error" in ctx:
        reason = str(ctx["error"])
    else:
        reason = str(first.get("msg", "")).replace("Input should be", "must be", 1)
    return f"{opts[0]} {first['input']}: {reason.rstrip('.')}"


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
            typer.secho(f"error: {usage_line(e)}{where}", fg="red", err=True)
            sys.exit(e.exit_code)
        raise
