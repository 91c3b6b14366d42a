"""The SynthFlowers mode oracle: trained by the CLI on real SynthFlowers shards to >= 99 % held-out accuracy; all
modes and KL ~ 0 on fresh SynthFlowers, one mode on a single-mode set, and a collapsed G reported as such."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flowergan_eval import oracle as O
from flowergan_eval import testing
from flowergan_eval import weights as W
from flowergan_eval.cli import app
from flowergan_eval.real import load_real, open_real
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    data = testing.synth_shards(base, 2880, seed=11)  # 60 per mode: 54 to train, the last 10 % held out
    out = tmp_path_factory.mktemp("oracle") / "oracle"
    result = CliRunner().invoke(app, ["oracle", "train", "--data", str(data), "--out", str(out), "--json",
                                      "--no-progress", "--cnn-epochs", "0"])  # SynthNet: test_eval_synth.py
    assert result.exit_code == 0, result.output + repr(result.exception)
    model, info = O.load(out)
    return {"data": data, "out": out, "result": json.loads(result.output), "model": model, "info": info}


def test_oracle_reaches_99_percent_on_held_out_images(trained):
    r = trained["result"]
    assert r["ok"] is True and r["metrics"]["accuracy"] >= 0.99
    assert r["oracle"]["n_test"] == 288 and r["oracle"]["num_modes"] == 48
    real = open_real(str(trained["data"]))
    assert (trained["info"]["pixel_fingerprint"], trained["info"]["shard_fingerprint"]) == (real.pixel_fingerprint,
                                                                                           real.shard_fingerprint)


def test_all_modes_and_kl_near_zero_on_fresh_synthflowers(trained, tmp_path_factory):
    fresh = open_real(str(testing.synth_shards(tmp_path_factory.getbasetemp(), 960, seed=12)))  # unseen images
    images, labels = load_real(fresh)
    pred = trained["model"].predict(images)
    assert (pred == labels).float().mean() >= 0.98
    s = O.mode_stats(pred.numpy(), 48, O.default_min_count(len(images), 48))
    assert s["covered"] == 48
    assert s["kl_uniform"] < 0.03  # exactly uniform labels (20 each), so only the oracle's errors count
    one = images[labels == 7]
    s1 = O.mode_stats(trained["model"].predict(one).numpy(), 48, O.default_min_count(len(one), 48))
    assert s1["covered"] == 1 and s1["counts"][7] >= len(one) - 1
    assert s1["kl_uniform"] == pytest.approx(math.log(48), abs=0.2)


def test_oracle_ignores_rotation_and_mirroring(trained, tmp_path_factory):
    fresh = open_real(str(testing.synth_shards(tmp_path_factory.getbasetemp(), 960, seed=12)))
    images, labels = load_real(fresh, 192)
    mirrored = images.flip(3)
    assert (trained["model"].predict(mirrored) == labels).float().mean() >= 0.97


def test_mode_stats_is_pure_and_counts_correctly():
    pred = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    s = O.mode_stats(pred, k=5, min_count=2)
    assert s["counts"] == [3, 2, 1, 4, 0] and s["covered"] == 3
    p = np.array([3, 2, 1, 4]) / 10
    assert s["kl_uniform"] == pytest.approx(float((p * np.log(p * 5)).sum()))
    assert O.mode_stats(np.arange(10) % 5, 5, 2)["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert O.default_min_count(10_000, 48) == 21 and O.default_min_count(10, 48) == 2


def test_modes_cli_on_a_collapsed_generator(trained, tmp_path_factory, monkeypatch):
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path_factory.mktemp("modes-cache")))
    run = testing.checkpoint(tmp_path_factory.getbasetemp() / "run-cli")  # untrained: one grey picture
    # Away from the clone: after `make demo` its data/synth64 is the run's recorded data, which eval falls back to.
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    result = CliRunner().invoke(app, ["modes", "--ckpt", str(run), "--oracle", str(trained["out"]), "--n", "96",
                                      "--json", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads(result.stdout)
    assert r["metrics"]["modes96/of"] == 48
    assert r["metrics"]["modes96/covered"] <= 2
    assert r["metrics"]["modes96/kl_uniform"] > 2.5  # log 48 = 3.87 for a single mode
    assert r["provenance"]["oracle_accuracy"] >= 0.99 and sum(r["counts"].values()) == 96
    # Without --oracle and without an oracle trained on --data, the message says how to make one.
    missing = CliRunner().invoke(app, ["modes", "--ckpt", str(run), "--data", str(trained["data"]), "--n", "8",
                                       "--no-progress"])
    assert missing.exit_code != 0 and "oracle train --data" in str(missing.exception)


def test_descriptor_is_rotation_invariant_for_a_centred_pattern():
    # A 5-fold star rotated by a fifth of a turn is the same picture: identical descriptors.
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    y = y + 0.16  # the oracle expects the flower slightly above the middle, as SynthFlowers draw it
    r, phi = torch.sqrt(x * x + y * y), torch.atan2(y, x)
    star = ((torch.cos(5 * phi) > 0.2) & (r < 0.6)).float()
    rotated = ((torch.cos(5 * (phi - 2 * math.pi / 5 * 0.5)) > 0.2) & (r < 0.6)).float()
    imgs = (torch.stack([star, rotated])[:, None].repeat(1, 3, 1, 1) * 255).to(torch.uint8)
    d = O.describe(imgs)
    spectrum = d[:, : 3 * len(O.RING_RADII) * O.HARMONICS].reshape(2, 3, len(O.RING_RADII), O.HARMONICS)
    assert spectrum[0, 0, 6, 5] > 5 * spectrum[0, 0, 6, 3]  # the 5-fold harmonic dominates
    assert torch.allclose(spectrum[0], spectrum[1], atol=0.03)
