"""After `make demo`: the closing lines' commands work as printed (the venv is not on PATH), and the report they
name works offline with no Inception weights: it plans what it can compute, trains the oracle on demand, falls back to
the run's recorded data, warns before a long run, and its --dry-run agrees with the real run.

The demo is stood in for by a folder laid out as `make demo` leaves the clone: runs/smoke trained by the real loop
(tiny: 10 steps) and data/synth64 written by the real SynthFlowers writer (480 images, enough for the oracle).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tiny_run import tiny_run
from flowergan_eval import testing
from flowergan_eval.cli import app
from flowergan_eval.plan import plan_report
from flowergan_eval.real import open_real
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the venv running the tests: where `make` puts the commands
PY = [sys.executable, "-m", "flowergan_eval.cli"]


def demo_next(venv: Path | None = None) -> list[str]:
    """The lines `make demo` closes with (its demo-next target, run by the real make)."""
    args = ["make", "--no-print-directory", "-s", "demo-next"] + ([f"VENV={venv}"] if venv else [])
    # As a newcomer's shell runs it: CI's `make test VENV=…` reaches this make through the environment and MAKEFLAGS.
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.splitlines()


def hinted_commands(lines: list[str]) -> list[list[str]]:
    """The command lines of the hint (indented), as argv."""
    return [shlex.split(line) for line in lines if line.startswith("  ")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A folder as `make demo` leaves the clone: runs/smoke (trained; its config records data/synth64) and the
    shards at data/synth64."""
    root = tmp_path_factory.mktemp("clone")
    run = tiny_run(root / "runs" / "smoke")
    assert json.loads((next((run / "checkpoints").iterdir()) / "state.json").read_text())["config"]["data"][
        "path"] == "data/synth64"
    shards = testing.synth_shards(tmp_path_factory.mktemp("shards"), 480, seed=3)
    shutil.copytree(shards, root / "data" / "synth64")
    return root


@pytest.fixture()
def offline(tmp_path, monkeypatch) -> dict[str, str]:
    """No weights, no network, an empty cache, and the venv not on PATH (commands must work as printed)."""
    from flowergan_eval import weights as W

    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(W.ENV_URL, "http://127.0.0.1:9/never-downloaded.pth")
    env = {k: v for k, v in os.environ.items() if k != W.ENV_WEIGHTS}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_closing_lines_give_commands_that_work_as_printed():
    lines = demo_next()
    assert any("source .venv/bin/activate" in line for line in lines)
    commands = hinted_commands(lines)
    assert {Path(c[0]).name for c in commands} >= {"tensorboard", "flowergan-eval"}
    for argv in commands:  # relative to the clone, where make demo is run
        assert argv[0].startswith(".venv/bin/"), f"{argv[0]} is not reachable as printed after make demo"
    # With the venv this test runs in, every named executable and the activate script are there.
    lines = demo_next(VENV)
    for argv in hinted_commands(lines):
        exe = Path(argv[0])
        assert exe.is_absolute() and exe.is_file() and os.access(exe, os.X_OK), f"{argv[0]} does not exist"
    activate = re.search(r"source (\S+?)'", "\n".join(lines))
    assert activate and Path(activate.group(1)).is_file()
    # make demo ends with these lines.
    demo_recipe = (ROOT / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "demo-next" in demo_recipe.splitlines()[-1]


def test_train_summary_names_tensorboard_as_a_shell_without_the_venv_runs_it(tmp_path, monkeypatch, capsys):
    """`flowergan train`'s closing lines (the middle of `make demo`'s output) name TensorBoard runnable as printed."""
    from flowergan.cli.train import _summary

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # make demo leaves the venv off PATH
    monkeypatch.chdir(ROOT)
    _summary(tmp_path / "run", {})
    line = next(x for x in capsys.readouterr().out.splitlines() if "TensorBoard" in x)
    exe = Path(shlex.split(line)[1])
    assert (ROOT / exe).is_file() and os.access(ROOT / exe, os.X_OK), f"{line!r} does not run as printed"


def test_readme_first_screen_is_make_demo_then_the_commands_it_prints():
    """From clone to report in commands that work as printed: the README's first block is `make demo` and exactly
    the commands the demo prints (which the tests here run)."""
    text = (ROOT / "README.md").read_text()
    first_screen = text[:text.index("make test")]
    block = re.search(r"```\n(make demo\n.*?)```", first_screen, re.S)
    assert block, "the README's first screen has no `make demo` block"
    lines = block.group(1).splitlines()
    assert lines[0] == "make demo"
    assert sorted(map(shlex.split, lines[1:])) == sorted(hinted_commands(demo_next()))
    assert "source .venv/bin/activate" in first_screen


def test_tensorboard_hint_reads_the_runs_events(demo, offline):
    (argv,) = [c for c in hinted_commands(demo_next(VENV)) if Path(c[0]).name == "tensorboard"]
    # --inspect reads the log dir the hint names and exits, instead of serving it.
    proc = subprocess.run(argv + ["--inspect"], cwd=demo, env=offline, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Loss/D" in proc.stdout and "Samples/ema" in proc.stdout


@pytest.mark.slow  # the report as printed: SynthNet and the oracle trained, 2,000 samples scored (about a minute)
def test_report_hint_works_offline_with_no_weights(demo, offline):
    (argv,) = [c for c in hinted_commands(demo_next(VENV)) if Path(c[0]).name == "flowergan-eval"]
    proc = subprocess.run(argv, cwd=demo, env=offline, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--data not given: using data/synth64" in proc.stderr
    assert "oracle training" in proc.stderr and "SynthNet training" in proc.stderr  # trained now, with a bar
    page = (demo / argv[argv.index("--out") + 1]).read_text()
    assert "synth_fd2k" in page and "modes2k/covered" in page and "fid2k" not in page
    assert "fid, kid, is, prdc (Inception)" in page and "--inception-weights PATH" in page  # left out, and how
    assert "Mode coverage:" in page and "for real images at the same N" in page


def _cli(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(app, [*args, "--json", "--no-progress"])
    out = json.loads(result.stdout) if result.exit_code == 0 else {}
    return result.exit_code, out, result.stderr + repr(result.exception)


def test_dry_run_agrees_with_the_real_run(demo, offline, monkeypatch, tmp_path):
    monkeypatch.chdir(demo)
    code, dry, err = _cli("report", "--ckpt", "runs/smoke", "--n", "48", "--dry-run")
    assert code == 0, err
    assert dry["problems"] == [] and dry["plan"]["metrics"] == ["synth_fd", "modes"]
    assert any("mode oracle: trained on the shards now" in m for m in dry["messages"])
    assert dry["estimate_s"] > 0 and any(m.startswith("estimate: about") for m in dry["messages"])
    code, real, err = _cli("report", "--ckpt", "runs/smoke", "--n", "48", "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    assert real["plan"] == dry["plan"]
    computed = {re.match(r"[a-z_]+?(?=\d)", k).group(0) for k in real["metrics"]}
    assert computed == {"synth_fd", "modes", "ms_ssim", "ndb", "near_dup", "memorisation"}
    assert real["reference"]["modes48/covered"] > real["metrics"]["modes48/covered"]  # real images cover more
    # The oracle and SynthNet trained by that run are what the next dry run finds.
    code, again, err = _cli("report", "--ckpt", "runs/smoke", "--n", "48", "--dry-run")
    assert any(m.startswith("mode oracle: cached in") for m in again["messages"])
    assert any(m.startswith("SynthNet: cached in") for m in again["messages"])


def test_dry_run_and_real_run_stop_at_the_same_problem(demo, offline, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # the run's recorded data/synth64 does not exist from here
    elsewhere.mkdir()
    ckpt = str(demo / "runs" / "smoke")
    dry = subprocess.run(PY + ["report", "--ckpt", ckpt, "--dry-run"], cwd=elsewhere, env=offline,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr  # the cluster's Job is checked this way where its volume is absent
    said = re.search(r"the real run would stop: (.*)", dry.stdout)
    assert said and "data/synth64" in said.group(1) and "pass --data" in said.group(1)
    real = subprocess.run(PY + ["report", "--ckpt", ckpt, "--no-progress"], cwd=elsewhere, env=offline,
                          capture_output=True, text=True, timeout=300)
    assert real.returncode == 2 and "Traceback" not in real.stderr
    assert real.stderr.strip().splitlines()[-1] == f"error: {said.group(1)}"


def test_eval_commands_fall_back_to_the_runs_recorded_data(demo, offline, monkeypatch):
    monkeypatch.chdir(demo)
    result = CliRunner().invoke(app, ["diversity", "--ckpt", "runs/smoke", "--n", "24", "--features", "synth",
                                      "--json", "--no-progress"])
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    assert result.stderr.count("--data not given: using data/synth64") == 1  # said once, in one line
    assert json.loads(result.stdout)["provenance"]["reference"]["data"] == "data/synth64"
    explicit = CliRunner().invoke(app, ["synth_fd", "--ckpt", "runs/smoke", "--n", "24", "--data", "data/synth64",
                                        "--json", "--no-progress"])
    assert explicit.exit_code == 0 and "--data not given" not in explicit.stderr


def test_a_long_dry_run_prints_the_estimate_and_an_n_that_fits(demo, offline):
    code, dry, err = _cli("report", "--ckpt", str(demo / "runs" / "smoke"), "--data", str(demo / "data" / "synth64"),
                          "--n", "20000000", "--dry-run")
    assert code == 0 and dry["estimate_s"] > 600, err
    warning = next(m for m in dry["messages"] if m.startswith("warning:"))
    suggested = int(re.search(r"--n (\d+) takes about", warning).group(1))
    assert 100 <= suggested < 20_000_000


@pytest.mark.parametrize("command", [["report"], ["synth_fd"], ["diversity", "--features", "synth"]],
                         ids=lambda c: c[0])
def test_a_long_run_warns_before_it_starts(demo, offline, command):
    """The real command says it before it computes anything (stopped as soon as it has)."""
    proc = subprocess.Popen(PY + [*command, "--ckpt", "runs/smoke", "--n", "20000000", "--no-progress"], cwd=demo,
                            env=offline, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline, seen = time.monotonic() + 300, ""
        while time.monotonic() < deadline and not seen.startswith("warning:"):
            seen = proc.stderr.readline() if proc.stderr else ""
            if not seen and proc.poll() is not None:
                break
    finally:
        proc.kill()
        proc.wait()
    assert seen.startswith("warning: this will take about") and "--n " in seen
    assert not list(Path(offline["FLOWERGAN_CACHE_DIR"]).rglob("*.json"))  # said before anything was trained


def test_plan_without_weights_on_photos_and_on_synthflowers(demo, offline, tmp_path):
    synth = open_real(str(demo / "data" / "synth64"))
    plan = plan_report(synth)
    assert plan.metrics == ["synth_fd", "modes"] and plan.diversity == "synth"
    assert [w for w, _ in plan.left_out] == ["fid, kid, is, prdc (Inception)"]
    with_weights = plan_report(synth, inception_weights=str(testing.inception_weights(tmp_path)))
    assert with_weights.metrics == ["synth_fd", "fid", "kid", "is", "prdc", "modes"] and not with_weights.left_out
    chosen = plan_report(synth, features="effnet-lite2")
    assert chosen.metrics == ["synth_fd", "effnet_fd", "kid", "prdc", "modes"] and chosen.diversity == "effnet-lite2"
    # Photos (any set that is not SynthFlowers): no oracle, no SynthNet; ImageNet features where installed.
    photos = open_real(str(demo / "data" / "synth64"))
    photos.manifest = {**photos.manifest, "kind": "folder"}
    plan = plan_report(photos)
    assert "modes" not in plan.metrics and "synth_fd" not in plan.metrics
    assert plan.metrics == ["effnet_fd"] or any("effnet_fd" in w for w, _ in plan.left_out)
