"""Terminal output of flowergan-eval: tables of numbers (progress bars: flowergan.progress, on stderr)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def fmt(value: Any) -> str:
    """A number as a person wants to read it: 4 significant digits, integers as integers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e6):
        return str(int(value))
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def provenance_lines(prov: dict[str, Any]) -> list[str]:
    """The sentences that say what a number was measured on."""
    lines = []
    if "checkpoint" in prov:
        lines.append(f"checkpoint  {prov['checkpoint']} (step {prov.get('step', '?')}, {prov.get('generator', 'G')}, "
                     f"seed {prov.get('seed', 0)})")
    ref = prov.get("reference")
    if ref:
        cached = "cached stats" if ref.get("cached") else "computed now"
        lines.append(f"reference   {ref.get('data')}: {ref.get('n', ref.get('num_samples'))} real images "
                     f"({ref.get('name')}, {ref.get('resolution')} px, "
                     f"pixel fingerprint {ref.get('pixel_fingerprint') or '-'}, {cached})")
    if "oracle" in prov:
        lines.append(f"oracle      {prov['oracle']} (held-out accuracy {prov.get('oracle_accuracy', 0):.2%}); a mode "
                     f"counts as covered with >= {prov.get('min_count')} samples")
    if "trained_on" in prov:
        lines.append(f"data        {prov['trained_on']}")
    if "extractor" in prov:
        quantised = ", generated images quantised to uint8 as a saved PNG" if "checkpoint" in prov else ""
        lines.append(f"extractor   {prov['extractor']}, resize {prov.get('resize')}{quantised}")
    return lines


def print_result(result: dict[str, Any], *, console: Console | None = None) -> None:
    """The human form of a command's result: provenance lines, then a metric | value | N table."""
    console = console or Console()
    for line in provenance_lines(result.get("provenance", {})):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    metrics = result.get("metrics", {})
    if metrics:
        table = Table(show_header=True, header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("N", justify="right")
        # Every number names the network that read the images: the provenance line when one did, else a column.
        read_by = result.get("extractor_of") or {}
        if len(set(read_by.values())) < 2:
            read_by = {}
        if read_by:
            table.add_column("extractor")
        table.add_column("meaning")
        notes = result.get("notes", {})
        n = result.get("provenance", {}).get("n", "")
        for name, value in metrics.items():
            cells = [name, fmt(value), fmt(n)] + ([read_by.get(name, "")] if read_by else []) + [notes.get(name, "")]
            table.add_row(*(Text(c) for c in cells))
        console.print(table)
    for line in result.get("messages", []):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
