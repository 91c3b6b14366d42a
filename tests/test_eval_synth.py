"""Offline quality metrics and one metric path: the registry's directions, SynthNet's Fréchet distance (synth_fd),
the mode metrics, `--features PATH` with a user's TorchScript backbone, eval.metric validation, and `flowergan train`
keeping a `best` checkpoint by synth_fd with no Inception weights anywhere."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flowergan_eval import api, testing
from flowergan_eval import metrics as M
from flowergan_eval import oracle as O
from flowergan_eval import stats as S
from flowergan_eval import synthnet as SN
from flowergan_eval import weights as W
from flowergan_eval.cli import app
from flowergan_eval.real import load_real, open_real
from typer.testing import CliRunner

from flowergan.config import EVAL_METRICS, ConfigError, load_config
from flowergan.errors import UserError

NO_DOWNLOAD = "http://127.0.0.1:9/never-downloaded.pth"


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No Inception weights anywhere, and a download would fail: every number here must come from elsewhere."""
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(W.ENV_URL, NO_DOWNLOAD)
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    S._MEMORY.clear()


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("base, lower, features, key", [
    ("fid", True, "inception", "fid1k"), ("kid", True, "inception", "kid1k"), ("is", False, "inception", "is1k"),
    ("prdc", False, "inception", "prdc1k/coverage"), ("synth_fd", True, "synth", "synth_fd1k"),
    ("modes", False, "oracle", "modes1k/covered"), ("modes_kl", True, "oracle", "modes_kl1k")])
def test_registry_says_direction_extractor_and_best_key(base, lower, features, key):
    entry = M.REGISTRY[base]
    assert entry.lower_is_better is lower and entry.features == features
    assert M.best_key(base, 1000) == key
    ev = api.InTrainingEval(metric=base, n=1000, data="", inception_weights=None, nz=16, seed=0)
    assert ev.best_key == key and ev.lower_is_better is lower  # what the training loop asks
    assert M.metric_name(base, 500) == f"{base}500"


def test_config_accepts_every_registry_entry_and_names_them_when_wrong():
    assert set(EVAL_METRICS) == set(M.REGISTRY)  # config.py cannot import the eval package: keep the lists equal
    for base, entry in M.REGISTRY.items():  # a per-class metric needs a conditional model (test_conditional)
        sets = [f"eval.metric={base}"] + (["model.conditional=projection"] if entry.facts.per_class else [])
        assert load_config(None, sets).eval.metric == base
    with pytest.raises(ConfigError) as e:
        load_config(None, ["eval.metric=lpips"])
    assert str(e.value).endswith("eval.metric: 'lpips' is not allowed; choose one of: "
                            + ", ".join(M.REGISTRY))


def test_mode_metrics_are_pure_functions_of_predicted_modes():
    pred = np.repeat(np.arange(4), [5, 5, 5, 1])  # 4 of 6 modes used, the last one too rarely to count
    out = M.compute("modes", 16, {"modes": pred, "num_modes": 6}, None, min_count=2)
    p = np.array([5, 5, 5, 1]) / 16
    assert out == {"modes16/covered": 3.0, "modes16/of": 6.0,
                   "modes16/kl_uniform": pytest.approx(float((p * np.log(p * 6)).sum()))}
    kl = M.compute("modes_kl", 16, {"modes": pred, "num_modes": 6}, None, min_count=2)
    assert kl["modes_kl16"] == out["modes16/kl_uniform"] and kl["modes_kl16/covered"] == 3.0


# ---------------------------------------------------------------- SynthNet and synth_fd
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """SynthNet trained (2 epochs) on 384 SynthFlowers; 192 fresh ones from another seed for held-out checks."""
    base = tmp_path_factory.getbasetemp()
    train = open_real(str(testing.synth_shards(base, 384, seed=21)))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, info = SN.train(train, epochs=2, seed=0)
    out = tmp_path_factory.mktemp("synthnet") / "oracle"
    O.save_files(out, {SN.WEIGHTS: SN.tensors(model)}, {SN.INFO: info})
    return {"train": train, "fresh": open_real(str(testing.synth_shards(base, 192, seed=22))), "dir": out}


def test_synth_fd_real_vs_held_out_real_is_far_below_real_vs_noise(synth):
    model, info = SN.load(synth["dir"])
    extractor = SN.SynthExtractor(model, info)
    ref = S.reference(synth["train"], extractor)
    assert ref.pool.shape == (384, SN.FEATURES) and ref.meta["resize"] == "area 64->32"
    fresh, _ = load_real(synth["fresh"])
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, fresh.shape, generator=g, dtype=torch.uint8)
    grey = torch.full_like(fresh, 128)

    def synth_fd(images: torch.Tensor) -> float:
        return M.compute("synth_fd", len(images), {"pool": extractor(images)[0].numpy()}, ref.as_dict())[
            f"synth_fd{len(images)}"]

    real_vs_real, real_vs_noise, real_vs_grey = synth_fd(fresh), synth_fd(noise), synth_fd(grey)
    assert 0 < real_vs_real < 0.1 * min(real_vs_noise, real_vs_grey), (real_vs_real, real_vs_noise, real_vs_grey)
    assert "synthnet-v1" in extractor.name and info["sha256"][:12] in extractor.name


def test_oracle_dir_keeps_both_models_when_one_is_rewritten(synth, tmp_path):
    out = tmp_path / "both"
    model, info = SN.load(synth["dir"])
    O.save_files(out, {SN.WEIGHTS: SN.tensors(model)}, {SN.INFO: info})
    O.save_files(out, {"other.safetensors": {"w": torch.zeros(2)}}, {"other.json": {"v": 1}})
    assert sorted(p.name for p in out.iterdir()) == ["other.json", "other.safetensors", SN.INFO, SN.WEIGHTS]
    assert SN.load(out)[1]["sha256"] == info["sha256"]  # the earlier model survived, byte for byte
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary directory left behind


def test_synth_fd_cli_trains_synthnet_once_and_names_its_extractor(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    data = testing.synth_shards(base, 48, seed=23)
    run = testing.checkpoint(base / "run-synth", weight_std=0.05)
    args = ["synth-fd", "--ckpt", str(run), "--data", str(data), "--n", "16", "--json", "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    r = json.loads(first.stdout)
    fd = r["metrics"]["synth_fd16"]
    assert math.isfinite(fd) and fd > 0
    assert r["extractor_of"]["synth_fd16"].startswith("synthnet-v1[") and "synthnet-v1" in r["provenance"]["extractor"]
    assert (O.default_dir(open_real(str(data))) / SN.INFO).is_file()  # cached next to the mode oracle
    table = CliRunner().invoke(app, args[:-2] + ["--no-progress"])  # the printed table, from the cache this time
    assert table.exit_code == 0 and "training SynthNet" not in table.output
    assert "synth_fd16" in table.stdout and "synthnet-v1" in table.stdout and "extractor" in table.stdout


# ---------------------------------------------------------------- --features PATH
class _Pool(torch.nn.Module):
    """A stand-in for a user's backbone: 4x4 average colours, 48-d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def test_features_path_runs_a_users_torchscript_backbone(tmp_path_factory, tmp_path):
    base = tmp_path_factory.getbasetemp()
    data = testing.synth_shards(base, 24, seed=24)
    run = testing.checkpoint(base / "run-synth", weight_std=0.05)
    module = tmp_path / "pool4.pt"
    torch.jit.save(torch.jit.script(_Pool()), str(module))  # how a user exports a backbone
    result = CliRunner().invoke(app, ["fid", "--ckpt", str(run), "--data", str(data), "--n", "12", "--json",
                                      "--no-progress", "--features", str(module)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads(result.stdout)
    assert r["extractor_of"]["fid12"].startswith("torchscript pool4.pt[") and "48-d" in r["provenance"]["extractor"]
    # The same number by hand: the module's features of the real images and of G's samples, and the pure FID.
    from flowergan_eval import features as FT

    from flowergan.artifacts.checkpoint import read_generator

    G, cfg = read_generator(run / "checkpoints" / "step-00000100")
    fake = torch.cat(list(FT.generate(G, FT.latents(12, cfg.model.nz, 0))))
    real, _ = load_real(open_real(str(data)))
    expected = M.fid_from_features(_Pool()(fake.float() / 255).numpy(), _Pool()(real.float() / 255).numpy())
    assert r["metrics"]["fid12"] == pytest.approx(expected, rel=1e-4)
    bad = CliRunner().invoke(app, ["is", "--ckpt", str(run), "--n", "12", "--features", str(module), "--no-progress"])
    assert isinstance(bad.exception, UserError) and "is needs class logits" in str(bad.exception)


@pytest.mark.slow  # importing torchvision alone takes 10-40 s on the shared 2 cores
def test_features_name_equals_state_dict_builds_a_torchvision_backbone(tmp_path_factory, tmp_path):
    """NAME=FILE: the user's weights for a torchvision architecture, read with weights_only=True, head dropped."""
    import torchvision.models as tvm

    base = tmp_path_factory.getbasetemp()
    data = testing.synth_shards(base, 24, seed=24)
    run = testing.checkpoint(base / "run-synth", weight_std=0.05)
    torch.manual_seed(0)
    net = tvm.squeezenet1_1(weights=None)
    torch.save(net.state_dict(), tmp_path / "squeeze.pth")
    spec = f"squeezenet1_1={tmp_path / 'squeeze.pth'}"
    result = CliRunner().invoke(app, ["kid", "--ckpt", str(run), "--data", str(data), "--n", "8", "--json",
                                      "--no-progress", "--features", spec])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads(result.stdout)
    assert r["extractor_of"]["kid8"].startswith("squeezenet1_1 squeeze.pth[") and math.isfinite(r["metrics"]["kid8"])
    wrong = CliRunner().invoke(app, ["kid", "--ckpt", str(run), "--data", str(data), "--n", "8", "--no-progress",
                                     "--features", f"resnet18={tmp_path / 'squeeze.pth'}"])
    assert isinstance(wrong.exception, UserError) and "does not fit resnet18" in str(wrong.exception)


def test_features_names_what_is_allowed(tmp_path_factory):
    run = testing.checkpoint(tmp_path_factory.getbasetemp() / "run-synth", weight_std=0.05)
    data = testing.synth_shards(tmp_path_factory.getbasetemp(), 24, seed=24)
    r = CliRunner().invoke(app, ["kid", "--ckpt", str(run), "--data", str(data), "--n", "8", "--features", "nope",
                                 "--no-progress"])
    assert isinstance(r.exception, UserError)  # the console script prints it as one line, exit 2
    assert ("--features nope: not one of inception, synth, effnet-lite2, effnet-lite1, nor an existing file"
            in str(r.exception))


# ---------------------------------------------------------------- the done condition
@pytest.mark.slow
def test_flowergan_train_keeps_best_by_synth_fd_without_inception_weights(tmp_path, tmp_path_factory):
    """`flowergan train` (the CLI, a fresh process) with eval.every > 0 and eval.metric = synth_fd."""
    data = testing.synth_shards(tmp_path_factory.getbasetemp(), 64, seed=25)
    cache = tmp_path / "cache"
    env = {**os.environ, W.ENV_CACHE: str(cache), W.ENV_URL: NO_DOWNLOAD, "OMP_NUM_THREADS": "2"}
    env.pop(W.ENV_WEIGHTS, None)
    run = tmp_path / "run"
    sets = ["model.ngf=8", "model.ndf=8", "train.batch_size=8", "train.steps=6", "train.checkpoint_every=100",
            "log.every=3", "log.sample_every=100", "log.progress=false", "train.device=cpu", "data.workers=0",
            f"data.path={data}", "eval.every=3", "eval.n=16", "eval.metric=synth_fd"]
    cmd = [str(Path(sys.executable).parent / "flowergan"), "train", "--run-dir", str(run)]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval: synth_fd16 (lower is better) read by synthnet-v1[" in r.stderr
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "Eval/synth_fd16" in e]
    assert [e["step"] for e in evals] == [3, 6]
    best = json.loads((run / "checkpoints" / "best" / "state.json").read_text())
    assert best["metrics"]["synth_fd16"] == min(e["Eval/synth_fd16"] for e in evals)
    assert not list(cache.rglob("*.pth"))  # no Inception weights were fetched or needed
    assert list(cache.rglob(SN.INFO))  # SynthNet was trained on the data once and cached
