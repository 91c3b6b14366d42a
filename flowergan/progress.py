"""The one progress-bar helper of both packages: `progress_bar` (rich: bar, count, elapsed, ETA) for every long job
(sharding, sampling, flowergan-eval on stderr), and `TrainProgress`, what a person watching a training run sees: the
same bar on a terminal, one plain line per log interval elsewhere (`kubectl logs`, `ray job logs`, a file), where a
live bar prints nothing until the very end."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar(Progress):
    """rich's Progress, except that a bar that never got a task leaves no trace: off a terminal rich ends every bar
    with a line break, so an error raised before any work (a bad --n, a missing file) would follow an empty line."""

    def stop(self) -> None:
        if self.task_ids:
            super().stop()
        elif not self.disable:
            self.live.stop()  # an empty display draws nothing


def progress_bar(enabled: bool = True, *extra_columns, console: Console | None = None,
                 stderr: bool = False) -> Progress:
    """A rich Progress with bar, count, elapsed and ETA; use `with progress_bar() as p: t = p.add_task(...)`.
    `stderr=True` draws it on stderr, so that a command's stdout (one JSON object, say) stays parseable."""
    return _Bar(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), *extra_columns,
        disable=not enabled, transient=False, console=console or (Console(stderr=True) if stderr else None),
    )


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainProgress:
    """`start()`, `advance()` every step, `log(step, metrics)` at log intervals, `say(text)`, `stop()`.

    `enabled=False` (log.progress off, or a rank other than 0) prints nothing but `say`.
    """

    def __init__(self, total: int, completed: int, enabled: bool, stream: TextIO | None = None):
        self.total, self.start_step = total, completed
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.bar = None
        if self.live:
            self.bar = progress_bar(True, TextColumn("{task.fields[info]}"), console=Console(file=self.stream))
            self.task = self.bar.add_task("train", total=total, completed=completed, info="")

    def start(self) -> None:
        self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def rewind(self, step: int) -> None:
        """After a rollback the bar goes back to `step`."""
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """The losses and speed of the last interval, on the bar or as one flushed line."""
        speed = f"{metrics['Speed/img_per_s']:.0f} img/s"
        losses = f"D {metrics['Loss/D']:.3f}  G {metrics['Loss/G']:.3f}"
        if self.bar is not None:
            self.bar.update(self.task, info=f"{speed}  {losses}")
        elif self.enabled:
            elapsed = time.perf_counter() - self.t0
            done = step - self.start_step
            eta = elapsed / done * (self.total - step) if done > 0 else 0.0
            print(f"step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)  {speed}  {losses}  "
                  f"{_d_outputs(metrics)}  "
                  f"elapsed {_clock(elapsed)}  ETA {_clock(eta)}", file=self.stream, flush=True)

    def say(self, text: str) -> None:
        """A message that must be seen whatever the mode (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _d_outputs(metrics: dict[str, float]) -> str:
    """D on the reals and the fakes: probabilities under train.loss = bce, raw scores (D/*_logit) under hinge."""
    if "D/real" in metrics:
        return f"D(x) {metrics['D/real']:.3f}  D(G(z)) {metrics['D/fake_after']:.3f}"
    return f"D(x) logit {metrics['D/real_logit']:.3f}  D(G(z)) logit {metrics['D/fake_after_logit']:.3f}"
