"""The import graph: no circle between any two modules, and every room of the house sits on a floor of the layers
contract that `make lint` (lint-imports, configured in pyproject.toml) checks, so an arrow back up fails it."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
# flowergan/__init__.py's API is imported on first attribute access (PEP 562), never by `import flowergan`.
LAZY = {("flowergan", "flowergan.artifacts"), ("flowergan", "flowergan.generation")}


def _toml() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("flowergan", "flowergan_eval", include_external_packages=False,
                             exclude_type_checking_imports=True)


def _edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    # Importing a package runs its __init__ first anyway: an arrow into a root package is not one of design.
    return {m: {i for i in graph.find_modules_directly_imported_by(m)
                if i not in ("flowergan", "flowergan_eval") and (m, i) not in LAZY} for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere(graph) -> None:
    assert _cycles(_edges(graph)) == []


def test_the_circle_finder_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_room_is_on_a_floor_of_the_layers_contract(graph) -> None:
    contracts = _toml()["tool"]["importlinter"]["contracts"]
    floors = next(c for c in contracts if c["type"] == "layers" and "containers" not in c)["layers"]
    placed = {name.strip() for layer in floors for name in layer.split("|")}
    rooms = {".".join(m.split(".")[:2]) for m in graph.modules if m.startswith("flowergan.")}
    rooms -= {"flowergan.__main__"}  # `python -m flowergan`: the CLI's entry, above everything
    assert rooms <= placed, f"not on any floor: {sorted(rooms - placed)}"
    assert "flowergan_eval" in placed
    train = next(c for c in contracts if c.get("containers") == ["flowergan.train"])["layers"]
    placed_train = {name.strip() for layer in train for name in layer.split("|")}
    in_train = {m.split(".")[2] for m in graph.modules if m.startswith("flowergan.train.")}
    assert in_train <= placed_train, f"not on any floor of flowergan.train: {sorted(in_train - placed_train)}"
