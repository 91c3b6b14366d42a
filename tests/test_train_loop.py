"""The loop end to end on the CPU: outputs, TensorBoard tags, exact resume, NaN rollback, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _core import TensorStream, tiny_config
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts.checkpoint import read_generator
from flowergan.errors import UserError
from flowergan.train.loop import train

TAGS = {"Loss/D", "Loss/G", "D/real", "D/fake_before", "D/fake_after", "Speed/img_per_s", "LR/G", "LR/D"}


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_30_step_run_writes_everything(tmp_path):
    run = tmp_path / "run"
    metrics = train(tiny_config(run, "train.steps=30"), stream=TensorStream())
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("Loss/D", "Loss/G"))
    assert [p.name for p in ckpt_io.list_checkpoints(run / "checkpoints")] == [
        "step-00000010", "step-00000020", "step-00000030"][-3:]
    for name in ("config.toml", "metrics.jsonl", "progress.gif", "losses.png"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "samples" / "ema-00000030.png").is_file() and (run / "samples" / "raw-00000030.png").is_file()

    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    assert TAGS <= set(ea.Tags()["scalars"])
    assert {"Samples/ema", "Samples/raw"} <= set(ea.Tags()["images"])
    assert [e.step for e in ea.Scalars("Loss/D")] == [5, 10, 15, 20, 25, 30]
    # 64 images / batch 8 = 8 steps per epoch: epoch means are logged too.
    assert "Epoch/Loss_D" in ea.Tags()["scalars"]

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert TAGS <= set(lines[0]) and lines[-1]["step"] == 30

    state = json.loads((run / "checkpoints" / "step-00000030" / "state.json").read_text())
    assert state["step"] == 30 and state["images_seen"] == 240
    assert state["config"]["model"]["ngf"] == 8 and state["version"]
    tensors = load_file(str(run / "checkpoints" / "step-00000030" / "models.safetensors"))
    assert {k.split(".")[0] for k in tensors} == {"G", "D", "G_ema"}
    optim = torch.load(run / "checkpoints" / "step-00000030" / "optim.pt", weights_only=True)
    assert {"opt_g", "opt_d", "scaler", "rng"} <= set(optim)


@pytest.mark.parametrize("extra", [(), ("model.d_dropout=0.1", "train.diffaugment=color,translation,cutout",
                                        "train.d_steps=2")])
def test_resume_is_bit_identical(tmp_path, extra):
    """N steps straight == N/2 steps, then --resume to N: same G, G_ema and D weights, bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(straight, "train.steps=20", "train.checkpoint_every=7", *extra), stream=TensorStream())
    train(tiny_config(split, "train.steps=10", "train.checkpoint_every=7", *extra), stream=TensorStream())
    train(tiny_config(split, "train.steps=20", "train.checkpoint_every=7", *extra), resume=True,
          stream=TensorStream())
    for ema in (False, True):
        a, _ = read_generator(straight, ema=ema)
        b, _ = read_generator(split, ema=ema)
        assert _weights_equal(a, b)
    da, _ = ckpt_io.read_discriminator(straight)
    db, _ = ckpt_io.read_discriminator(split)
    assert _weights_equal(da, db)
    # And training moved the weights at all (the comparison is not between two untouched inits).
    g0, _ = read_generator(split / "checkpoints" / "step-00000014", ema=False)
    assert not _weights_equal(a, g0)


def test_existing_run_dir_needs_resume(tmp_path):
    train(tiny_config(tmp_path, "train.steps=10"), stream=TensorStream())
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(tmp_path, "train.steps=20"), stream=TensorStream())


def test_nan_rolls_back_and_recovers(tmp_path, capsys):
    """A non-finite loss once: roll back to the last good state, continue, finish with finite weights."""
    stream = TensorStream(poison={13: False})  # batch 13 is NaN the first time only
    metrics = train(tiny_config(tmp_path, "train.steps=20"), stream=stream)
    assert stream.poisoned == 1
    assert "rolling back to step 10" in capsys.readouterr().out
    assert torch.isfinite(torch.tensor(metrics["Loss/D"]))
    for ckpt in ckpt_io.list_checkpoints(tmp_path / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "models.safetensors")).values())


def test_nan_that_persists_stops_with_one_line(tmp_path):
    stream = TensorStream(poison={13: True})  # NaN every time the stream passes batch 13
    with pytest.raises(UserError, match="non-finite loss persisted after 2 rollbacks"):
        train(tiny_config(tmp_path, "train.steps=20", "train.nan_retries=2"), stream=stream)
    assert stream.poisoned == 3
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000010"]


def test_checkpoint_of_other_architecture_is_one_line(tmp_path):
    train(tiny_config(tmp_path, "train.steps=10"), stream=TensorStream())
    cfg = tiny_config(tmp_path, "train.steps=20", "model.ngf=16")
    with pytest.raises(UserError, match=r"different architecture: model.ngf=8 \(config says 16\)"):
        train(cfg, resume=True, stream=TensorStream())


def test_unwritable_run_dir_as_a_file(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="log.run_dir: cannot write"):
        train(tiny_config(tmp_path / "file" / "run", "train.steps=2"), stream=TensorStream())


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "flowergan")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_sample_cli_and_errors(tmp_path):
    train(tiny_config(tmp_path / "run", "train.steps=10"), stream=TensorStream())
    out = tmp_path / "grid.png"
    r = _cli("sample", "--ckpt", str(tmp_path / "run"), "--n", "16", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(out).size == (4 * 66 + 2, 4 * 66 + 2)  # 4x4 grid of 64px images, 2px padding

    r = _cli("sample", "--ckpt", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'nowhere'} does not exist "
                                            "(pass a run directory or a checkpoint directory)"]

    r = _cli("train", "--config", "jobs/smoke.toml", "--set", "model.kernel=3", "--dry-run")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --set model.kernel=3: model.kernel: 3 is not allowed; choose one of: 4, 5"]

    r = _cli("train", "--config", "jobs/smoke.toml", "--run-dir", str(tmp_path / "x"), "--set", "train.steps=7",
             "--dry-run")
    assert r.returncode == 0 and "steps = 7" in r.stdout and f'run_dir = "{tmp_path / "x"}"' in r.stdout


def test_lr_decay_follows_the_step_and_a_resumed_run_continues_it_bit_identical(tmp_path):
    """optim.lr_decay_steps: LR/G ramps to 0 over the last steps; a run resumed from a checkpoint inside the ramp
    (a copy of the straight run's step-14 checkpoint, as a killed run leaves it) ends with the same weights."""
    import shutil

    common = ("train.steps=20", "train.checkpoint_every=7", "optim.lr_decay_steps=10", "log.every=5")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(straight, *common), stream=TensorStream())
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["LR/G"] for r in rows if "LR/G" in r}
    # Logged after step s ran with the rate of 0-based step s - 1: factor min(1, (20 - (s - 1)) / 10).
    assert lr[5] == pytest.approx(2e-4) and lr[15] == pytest.approx(2e-4 * 0.6)
    assert lr[20] == pytest.approx(2e-4 * 0.1)
    shutil.copytree(straight / "checkpoints" / "step-00000014", resumed / "checkpoints" / "step-00000014")
    train(tiny_config(resumed, *common), resume=True, stream=TensorStream())
    for ema in (False, True):
        assert _weights_equal(read_generator(straight, ema=ema)[0], read_generator(resumed, ema=ema)[0])


def test_resume_is_bit_identical_on_real_shards_with_a_loader_worker(tmp_path):
    """The same property through the real path: SynthFlowers shards, a loader process, flips on."""
    from flowergan.data.ingest.synth import write_synthflowers

    shards = tmp_path / "synth64"
    write_synthflowers(shards, n=96, size=64, seed=0, shard_size=12, progress=False)
    common = (f"data.path={shards}", "data.workers=1", "train.checkpoint_every=3")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(straight, "train.steps=6", *common))
    train(tiny_config(split, "train.steps=3", *common))
    train(tiny_config(split, "train.steps=6", *common), resume=True)
    a, _ = read_generator(straight, ema=False)
    b, _ = read_generator(split, ema=False)
    assert _weights_equal(a, b)


def test_in_training_eval_keeps_best(tmp_path, monkeypatch):
    """eval.every: KID through flowergan_eval's public API, logged, and the best checkpoint copied to best/."""
    from flowergan_eval import testing
    from flowergan_eval import weights as W
    from flowergan_eval.api import in_training_evaluator

    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    weights = testing.inception_weights(tmp_path, seed=0)  # random weights: no download in tests
    ref = testing.synth_shards(tmp_path, 16, seed=1)
    cfg = tiny_config(tmp_path / "run", "train.steps=10", "train.checkpoint_every=100", "eval.every=5", "eval.n=8",
                      "eval.metric=kid", f"eval.data={ref}", f"eval.inception_weights={weights}")
    metrics = train(cfg, stream=TensorStream(), evaluate=in_training_evaluator(cfg))
    assert "kid8" in metrics
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "Eval/kid8" in r]
    assert [r["step"] for r in evals] == [5, 10]
    best = json.loads((tmp_path / "run" / "checkpoints" / "best" / "state.json").read_text())
    assert best["metrics"]["kid8"] == min(r["Eval/kid8"] for r in evals)
    # Eval steps are checkpoint steps even when checkpoint_every is longer.
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "step-00000005", "step-00000010"]


def test_training_never_imports_the_eval_package():
    """The import graph reads top to bottom: evaluation is handed to the loop, which never imports it."""
    code = ("import sys, flowergan.train.loop, flowergan.train.gan.step, flowergan.data.loader.stream; "
            "print(sorted(m for m in sys.modules if m.startswith('flowergan_eval')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("script, args", [("flowergan", ["train", "--no-such-flag"]),
                                          ("flowergan", ["data", "shard"]),
                                          ("flowergan-eval", ["fid", "--no-such-flag"])])
def test_usage_errors_are_short_not_tracebacks(script, args):
    exe = os.path.join(os.path.dirname(sys.executable), script)
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    # One line, like every other user error, naming the command whose --help explains it.
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help)" in lines[0], r.stderr
