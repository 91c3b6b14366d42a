"""The one progress-bar style of every long job (rich), silenced when output is not wanted."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, *extra_columns, console: Console | None = None) -> Progress:
    """A rich Progress with bar, count, elapsed and ETA; use `with progress_bar() as p: t = p.add_task(...)`."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), *extra_columns,
        disable=not enabled, transient=False, console=console,
    )
