"""The search space file: which config fields a sweep varies and how, validated before anything starts.

    [space]
    train.batch_size = { grid = [64, 128] }          # every value, crossed with the other grids
    model.d_head = { choice = ["conv", "dense"] }    # one value drawn per trial
    optim.lr_d = { loguniform = [1e-4, 2e-4] }       # lo, hi (both > 0)
    model.d_dropout = { uniform = [0.0, 0.3] }       # lo, hi

Keys are config fields (`flowergan config` lists them). Every value (and both bounds of a range) is checked
against the field's type and limits, and every combination of the discrete values against the rules that join
fields, so a bad space fails in a second with one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowergan.config import Config, ConfigError, apply_value, from_dict, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KINDS = ("grid", "choice", "uniform", "loguniform")
MAX_COMBINATIONS = 10_000  # discrete combinations checked up front (beyond that, only each value alone)


@dataclass(frozen=True)
class Param:
    """One swept field: `kind` is grid or choice (with `values`) or uniform / loguniform (with lo, hi)."""

    field: str  # "section.key"
    kind: str
    values: tuple[Any, ...] = ()
    lo: float = 0.0
    hi: float = 0.0

    @property
    def discrete(self) -> bool:
        return self.kind in ("grid", "choice")


def _field_type(field: str) -> str:
    section, key = field.split(".", 1)
    for f in dataclasses.fields(getattr(Config(), section)):
        if f.name == key:
            return f.type if isinstance(f.type, str) else f.type.__name__
    raise AssertionError(field)  # checked by _check_field first


def _check_field(field: str) -> None:
    """An unknown section or key raises the config's own one-line error."""
    if "." not in field:
        raise ConfigError(f"{field}: not a config field; write section.key, e.g. train.batch_size")
    section, key = field.split(".", 1)
    probe = Config()
    default = getattr(getattr(probe, section), key, None) if hasattr(probe, section) else None
    apply_value(probe, section, key, default, from_text=False)


def _param(field: str, spec: Any) -> Param:
    """One `field = { kind = ... }` entry, checked against the field's type and limits."""
    _check_field(field)
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{field}: expected one of {{ grid = [...] }}, {{ choice = [...] }}, "
                          f"{{ uniform = [lo, hi] }}, {{ loguniform = [lo, hi] }}; got {spec!r}")
    kind, value = next(iter(spec.items()))
    section, key = field.split(".", 1)
    if kind in ("grid", "choice"):
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{field}: {kind} needs a non-empty list of values, got {value!r}")
        for v in value:
            apply_value(Config(), section, key, v, from_text=False)
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{field}: {kind} lists a value twice: {value!r}")
        return Param(field, kind, values=tuple(value))
    if _field_type(field) != "float":
        raise ConfigError(f"{field}: {kind} needs a float field; {field} is {_field_type(field)} "
                          "(use grid or choice)")
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ConfigError(f"{field}: {kind} needs [lo, hi], two numbers; got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise ConfigError(f"{field}: {kind} lo {lo:g} > hi {hi:g}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{field}: loguniform needs lo > 0, got {lo:g}")
    for v in (lo, hi):
        apply_value(Config(), section, key, v, from_text=False)
    return Param(field, kind, lo=lo, hi=hi)


def _entries(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(field, spec) pairs from `train.batch_size = {...}` (nested tables) or `"train.batch_size" = {...}`."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        is_spec = isinstance(value, dict) and (not value or any(k in KINDS for k in value))
        if isinstance(value, dict) and not is_spec and name.count(".") == 0:
            out += _entries(value, f"{name}.")
        else:
            out.append((name, value))
    return out


def parse_space(data: dict[str, Any]) -> list[Param]:
    """The parameters of a parsed space file (its [space] table); raises ConfigError naming the field."""
    unknown = set(data) - {"space"}
    if unknown:
        raise ConfigError(f"unknown table [{sorted(unknown)[0]}]; a space file has one table, [space]")
    table = data.get("space")
    if not isinstance(table, dict) or not table:
        raise ConfigError("no [space] table: add e.g. `train.batch_size = { grid = [64, 128] }` under [space]")
    return [_param(field, spec) for field, spec in _entries(table)]


def apply_params(base: Config, values: dict[str, Any]) -> Config:
    """A copy of `base` with `values` ({field: value}) applied and the whole config validated."""
    cfg = from_dict(base.to_dict())
    for field, value in values.items():
        section, key = field.split(".", 1)
        apply_value(cfg, section, key, value, from_text=False)
    return validate(cfg)


def check_combinations(base: Config, params: list[Param]) -> None:
    """Every combination of the discrete values (ranges at both ends) with `base` passes the config's rules."""
    axes = [[(p.field, v) for v in (p.values if p.discrete else (p.lo, p.hi))] for p in params]
    combos = itertools.product(*axes)
    for combo in itertools.islice(combos, MAX_COMBINATIONS):
        values = dict(combo)
        try:
            apply_params(base, values)
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"the trial {shown} is not a valid config: {e}") from None


def load_space(path: str | Path, base: Config) -> list[Param]:
    """Read and validate a space file against `base`; every error is one line naming the file and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"space file {p} does not exist (e.g. --space jobs/sweeps/seed001.toml)")
    try:
        data = tomllib.loads(p.read_text())
        params = parse_space(data)
        check_combinations(base, params)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return params


def grid_size(params: list[Param]) -> int:
    """Trials per sample: the product of the grid sizes (choice and ranges draw once per trial)."""
    n = 1
    for p in params:
        if p.kind == "grid":
            n *= len(p.values)
    return n


def describe(params: list[Param]) -> str:
    """One line per parameter, for the driver's log."""
    def one(p: Param) -> str:
        if p.discrete:
            return f"{p.field} {p.kind} {list(p.values)}"
        return f"{p.field} {p.kind} [{p.lo:g}, {p.hi:g}]"

    return "; ".join(one(p) for p in params)
