"""Options more than one command takes, as Annotated aliases (the one typer style of every command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JobFile = Annotated[Path | None, typer.Option("--config", "-c", help="Job file (TOML), e.g. jobs/smoke.toml.")]
Overrides = Annotated[list[str], typer.Option("--set", "-s", metavar="<KEY=VALUE>",
                                              help="Override a config field: section.key=value (repeatable; "
                                                   "`flowergan config` lists them).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]
Address = Annotated[str | None, typer.Option("--address", help="Ray address: auto or ray://HOST:10001.")]
Workers = Annotated[int | None, typer.Option("--workers", help="Ray Train workers (cluster.workers).")]
GpusPerWorker = Annotated[float | None, typer.Option("--gpus-per-worker", help="GPUs each Ray Train worker reserves "
                                                                             "(cluster.gpus_per_worker; 0 = CPU "
                                                                             "workers).")]
CpusPerWorker = Annotated[float | None, typer.Option("--cpus-per-worker", help="CPUs each Ray Train worker reserves "
                                                                             "(cluster.cpus_per_worker).")]
