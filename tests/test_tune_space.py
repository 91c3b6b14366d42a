"""Search space files: parsed into parameters, every value checked against the config before any trial starts,
and every mistake (unknown field, empty choice, lo > hi, a value the field refuses) one line naming the file and
the field, exit 2, from the real `flowergan tune` command. No Ray is started here."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny_run import run_main

from flowergan.config import ConfigError, load_config
from flowergan.tune.space import Param, apply_params, grid_size, load_space

ROOT = Path(__file__).resolve().parents[1]


def _space(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(body)
    return path


def test_the_shipped_sweeps_parse() -> None:
    base = load_config(ROOT / "jobs" / "flowers64.toml")
    seed001 = load_space(ROOT / "jobs" / "sweeps" / "seed001.toml", base)
    assert seed001 == [Param("train.batch_size", "grid", (64, 128)), Param("model.d_head", "grid", ("conv", "dense"))]
    assert grid_size(seed001) == 4
    ttur = load_space(ROOT / "jobs" / "sweeps" / "ttur.toml", base)
    assert {p.field: p.kind for p in ttur} == {"optim.lr_d": "grid", "optim.lr_g": "grid", "model.d_dropout": "uniform"}
    assert [p.values for p in ttur[:2]] == [(1e-4, 2e-4), (1e-4, 2e-4)]
    assert (ttur[2].lo, ttur[2].hi) == (0.0, 0.3)
    assert grid_size(ttur) == 4


def test_quoted_keys_and_every_kind(tmp_path: Path) -> None:
    params = load_space(_space(tmp_path, '[space]\n"optim.lr_g" = { loguniform = [1e-5, 1e-3] }\n'
                                         'train.seed = { choice = [0, 1, 2] }\n'), load_config())
    assert params == [Param("optim.lr_g", "loguniform", lo=1e-5, hi=1e-3), Param("train.seed", "choice", (0, 1, 2))]
    cfg = apply_params(load_config(), {"optim.lr_g": 3e-4, "train.seed": 2})
    assert (cfg.optim.lr_g, cfg.train.seed) == (3e-4, 2)


BAD = {
    "unknown field": ('[space]\ntrain.bogus = { grid = [1] }\n', r"space.toml: unknown key train.bogus; keys of"),
    "unknown section": ('[space]\nnope.x = { grid = [1] }\n', r"space.toml: unknown section \[nope\]"),
    "empty choice": ('[space]\nmodel.d_head = { choice = [] }\n',
                     r"space.toml: model.d_head: choice needs a non-empty list of values"),
    "lo > hi": ('[space]\noptim.lr_d = { uniform = [2e-4, 1e-4] }\n',
                r"space.toml: optim.lr_d: uniform lo 0.0002 > hi 0.0001"),
    "value the field refuses": ('[space]\nmodel.d_head = { grid = ["conv", "wide"] }\n',
                                r"space.toml: model.d_head: 'wide' is not allowed; choose one of: conv, dense"),
    "out of range": ('[space]\nmodel.d_dropout = { uniform = [0.0, 0.95] }\n',
                     r"model.d_dropout: 0.95 is out of range; allowed: >= 0.0 and <= 0.9"),
    "wrong type": ('[space]\ntrain.batch_size = { grid = [64, "big"] }\n',
                   r"train.batch_size: expected int, got str 'big'"),
    "range on an int": ('[space]\ntrain.batch_size = { uniform = [8, 64] }\n',
                        r"train.batch_size: uniform needs a float field; train.batch_size is int"),
    "unknown kind": ('[space]\ntrain.seed = { normal = [0, 1] }\n', r"train.seed: expected one of \{ grid"),
    "loguniform at 0": ('[space]\nmodel.d_dropout = { loguniform = [0.0, 0.3] }\n', r"loguniform needs lo > 0"),
    "joined rule": ('[space]\ntrain.batch_size = { grid = [64, 63] }\n',
                    r"the trial train.batch_size=63 is not a valid config: train.batch_size: 63 does not split"),
    "no table": ('[grid]\ntrain.seed = [1]\n', r"unknown table \[grid\]"),
    "not toml": ('[space\n', r"space.toml: not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_one_line(tmp_path: Path, case: str) -> None:
    body, message = BAD[case]
    base = load_config(None, ["cluster.workers=2"] if case == "joined rule" else [])
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, body), base)


@pytest.mark.parametrize("case", ["unknown field", "empty choice", "lo > hi"])
def test_bad_space_from_the_command_line(tmp_path: Path, capsys, case: str) -> None:
    """The real command: exit 2, one line on stderr naming the file and the field, nothing started or written."""
    space = _space(tmp_path, BAD[case][0])
    code, out, err = run_main(capsys, "tune", "--config", ROOT / "jobs" / "smoke.toml", "--space", space,
                              "--out", tmp_path / "sweep")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {space}: ") and BAD[case][1].split(": ", 1)[1][:20].replace("\\", "") in err
    assert not (tmp_path / "sweep").exists()


def test_missing_space_file_and_dry_run(tmp_path: Path, capsys) -> None:
    code, _, err = run_main(capsys, "tune", "--config", ROOT / "jobs" / "smoke.toml", "--space", tmp_path / "no.toml")
    assert code == 2 and "space file" in err and "does not exist" in err
    code, out, _ = run_main(capsys, "tune", "--config", ROOT / "jobs" / "smoke.toml", "--space",
                            ROOT / "jobs" / "sweeps" / "seed001.toml", "--num-samples", "2", "--dry-run")
    assert code == 0
    assert "# 8 trial(s): train.batch_size grid [64, 128]; model.d_head grid ['conv', 'dense']" in out
