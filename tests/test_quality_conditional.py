"""benchmarks/quality.py's conditional recipes: uncond vs concat vs projection with bce or hinge, each scored by
modes, KL, synth-FD and class accuracy, the conditional grids one row per mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from flowergan.config import load_config


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_conditional_recipe_names_set_the_model_and_the_loss(tmp_path: Path) -> None:
    bench = _bench()
    args = type("A", (), {"steps": 2, "every": 0, "batch": 8, "seed": 0, "ngf": 4, "set": [], "tutorial_set": [],
                                "device": "cpu"})()
    cfg = bench.recipe_config("projection-hinge", args, "data", tmp_path)
    assert (cfg.model.conditional, cfg.train.loss, cfg.train.r1_gamma) == ("projection", "hinge", 1.0)
    plain = bench.recipe_config("uncond-bce", args, "data", tmp_path)
    flowergan = bench.recipe_config("flowergan", args, "data", tmp_path)
    same = ("data", "model", "optim", "train")  # only the run name differs
    assert plain.model.conditional == "none" and all(plain.to_dict()[s] == flowergan.to_dict()[s] for s in same)
    assert bench.GROUPS["conditional"] == ("flowergan", "concat-bce", "concat-hinge", "projection-bce",
                                           "projection-hinge")


@pytest.mark.slow  # two tiny trainings plus the oracle and SynthNet fitted on the 256 shards: ~1 min on 2 cores
def test_conditional_recipes_print_class_accuracy(shards: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FLOWERGAN_CACHE_DIR", str(tmp_path / "cache"))
    bench = _bench()
    bench.main(["--synth", str(shards), "--steps", "2", "--ngf", "4", "--batch", "8", "--n", "96", "--threads", "1",
                "--out", str(tmp_path / "q"), "--recipes", "concat-hinge,projection-bce"])
    out = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in out if line.startswith("{")]
    assert [r["recipe"] for r in rows] == ["concat-hinge", "projection-bce"]
    for r in rows:
        assert 0 <= r["class_acc"] <= 1 and 0 <= r["classes_covered"] <= 48 and "synth_fd96" in r
        assert 0 <= r["modes_covered"] <= 48
    assert sum("class accuracy" in line for line in out) == 2
    cfg = load_config(tmp_path / "q" / "run-projection-bce" / "config.toml")
    assert cfg.model.conditional == "projection" and cfg.model.num_classes == 48
    grid = Image.open(tmp_path / "q" / "quality-projection-bce.png")
    assert grid.height == 2 + 48 * 66  # one row per mode


def test_train_step_benchmark_prices_the_conditional_step(capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--rounds", "1", "--steps", "1", "--warmup", "0", "--batch", "4", "--conditional", "projection",
                "--classes", "5", "--loss", "hinge"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("train_step ratio=")  # the unconditional comparison keeps the last line
    cond = [line for line in out if line.startswith("conditional ratio=")]
    assert len(cond) == 1 and float(cond[0].split("=")[1].split()[0]) > 0
