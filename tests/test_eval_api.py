"""The API the training loop calls: `in_training_metric` gives the named, lower-is-better number first, leaves G
and the global RNGs as it found them, and reuses cached reference statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flowergan_eval import api, testing
from flowergan_eval import stats as S
from flowergan_eval import weights as W

from flowergan.artifacts.checkpoint import read_generator
from flowergan.errors import UserError


@pytest.fixture()
def env(tmp_path_factory, tmp_path, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(W.ENV_URL, "http://127.0.0.1:9/never-downloaded.pth")
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    S._MEMORY.clear()
    return {"weights": str(testing.inception_weights(base, seed=0)),
            "data": str(testing.synth_shards(base, 16, seed=1)),
            "run": testing.checkpoint(base / "run-cli")}


def test_in_training_kid_and_fid(env, tmp_path):
    G, cfg = read_generator(env["run"], ema=False)
    G.train()  # the loop's G is in training mode
    before = (torch.get_rng_state(), G.state_dict()["main.1.running_mean"].clone(), np.random.get_state()[1].copy())
    out = api.in_training_metric(G, nz=cfg.model.nz, metric="kid", n=8, data=env["data"], device="cpu",
                                 inception_weights=env["weights"], seed=0)
    assert list(out)[0] == "kid8" and math.isfinite(out["kid8"])
    assert G.training  # restored
    assert torch.equal(torch.get_rng_state(), before[0])  # the loop's random streams are untouched
    assert (np.random.get_state()[1] == before[2]).all()
    assert torch.equal(G.state_dict()["main.1.running_mean"], before[1])  # eval mode: BN stats not updated
    stats_files = list((tmp_path / "cache" / "stats").glob("ref-*.npz"))
    assert len(stats_files) == 1
    mtime = stats_files[0].stat().st_mtime_ns
    S._MEMORY.clear()  # a new process: the file is reused, not recomputed
    again = api.in_training_metric(G, nz=cfg.model.nz, metric="kid", n=8, data=env["data"], device="cpu",
                                   inception_weights=env["weights"], seed=0)
    assert again["kid8"] == pytest.approx(out["kid8"], rel=1e-9)
    assert stats_files[0].stat().st_mtime_ns == mtime
    # A DDP-wrapped G (a real one-process gloo group) is unwrapped; FID is the other allowed choice.
    import torch.distributed as td

    td.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg-store'}", rank=0, world_size=1)
    try:
        wrapper = torch.nn.parallel.DistributedDataParallel(G)
        fid = api.in_training_metric(wrapper, nz=cfg.model.nz, metric="fid", n=8, data=env["data"], device="cpu",
                                     inception_weights=env["weights"], seed=0)
    finally:
        td.destroy_process_group()
    assert list(fid) == ["fid8"] and fid["fid8"] > 0


def test_in_training_metric_rejects_unknown_metrics(env):
    G, cfg = read_generator(env["run"])
    with pytest.raises(UserError, match="eval.metric: 'nope' is not a registered metric; one of: fid, kid, is"):
        api.in_training_metric(G, nz=cfg.model.nz, metric="nope", n=8, data=env["data"], device="cpu",
                               inception_weights=env["weights"])
