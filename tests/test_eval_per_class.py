"""Scoring a conditional G class by class: intra-class FD and KID (any extractor), class accuracy and per-class
coverage read by the oracle; the pure functions by hand, then flowergan-eval and the in-training API end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _core import tiny_config
from flowergan_eval import api, testing
from flowergan_eval import metrics as M
from flowergan_eval import stats as S
from flowergan_eval import weights as W

from flowergan.artifacts import open_generator
from flowergan.config import ConfigError, load_config
from flowergan.errors import UserError
from flowergan.train.loop import train


def _classes(k: int, n: int, d: int, seed: int, spread: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """n points of each of k well-separated Gaussian classes in d dimensions, and their labels."""
    rng = np.random.RandomState(seed)
    centres = np.random.RandomState(0).randn(k, d) * spread
    labels = np.repeat(np.arange(k), n)
    return centres[labels] + rng.randn(k * n, d), labels


def test_intra_fd_compares_each_class_with_its_own_real_class() -> None:
    real, rl = _classes(3, 40, 4, seed=1)
    fake, fl = _classes(3, 40, 4, seed=2)
    right = M.compute("intra_fd", 120, {"pool": fake, "labels": fl}, {"pool": real, "labels": rl},
                      classes=["daisy", "rose", "wild rose"])
    assert set(right) == {"intra_fd120/mean", "intra_fd120/daisy", "intra_fd120/rose", "intra_fd120/wild_rose"}
    for c, name in enumerate(["daisy", "rose", "wild_rose"]):  # each class by hand: FD of its own two sets
        want = M.fid(*M.feature_stats(fake[fl == c]), *M.feature_stats(real[rl == c]))
        assert right[f"intra_fd120/{name}"] == pytest.approx(want, rel=1e-6)
    assert right["intra_fd120/mean"] == pytest.approx(np.mean([right[f"intra_fd120/{n}"]
                                                               for n in ("daisy", "rose", "wild_rose")]))
    # The same images with the wrong labels: each class is compared with another class's reals.
    wrong = M.compute("intra_fd", 120, {"pool": fake, "labels": (fl + 1) % 3}, {"pool": real, "labels": rl})
    assert wrong["intra_fd120/mean"] > 50 * right["intra_fd120/mean"]


def test_a_class_with_too_few_samples_is_left_out_of_the_mean() -> None:
    real, rl = _classes(3, 20, 4, seed=1)
    fake, fl = _classes(3, 20, 4, seed=2)
    keep = fl != 2
    keep[np.flatnonzero(fl == 2)[0]] = True  # one sample of class 2: no distance
    out = M.compute("intra_kid", 41, {"pool": fake[keep], "labels": fl[keep]}, {"pool": real, "labels": rl})
    assert math.isnan(out["intra_kid41/c2"]) and math.isfinite(out["intra_kid41/mean"])
    assert out["intra_kid41/mean"] == pytest.approx((out["intra_kid41/c0"] + out["intra_kid41/c1"]) / 2)
    with pytest.raises(ValueError, match="unconditional"):
        M.compute("intra_fd", 41, {"pool": fake}, {"pool": real, "labels": rl})


def test_class_accuracy_and_per_class_coverage_by_hand() -> None:
    asked = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    read = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 2])
    out = M.compute("class_acc", 12, {"modes": read, "num_modes": 3, "labels": asked}, None, min_count=2,
                    classes=["a", "b", "c"])
    assert out["class_acc12"] == pytest.approx(6 / 12)
    assert (out["class_acc12/a"], out["class_acc12/b"], out["class_acc12/c"]) == (0.75, 0.5, 0.25)
    assert out["class_acc12/covered"] == 2 and out["class_acc12/of"] == 3  # c was read right once only


def test_a_per_class_eval_metric_on_an_unconditional_model_is_one_line() -> None:
    with pytest.raises(ConfigError, match="eval.metric = 'intra_fd' .* model.conditional = 'none'"):
        load_config(None, ["eval.metric=intra_fd"])
    assert load_config(None, ["eval.metric=class_acc", "model.conditional=projection"]).eval.metric == "class_acc"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("per-class")
    mp = pytest.MonkeyPatch()
    mp.setenv(W.ENV_CACHE, str(base / "cache"))
    mp.setenv(W.ENV_URL, "http://127.0.0.1:9/never-downloaded.pth")
    S._MEMORY.clear()
    data = testing.synth_shards(base, 144, seed=1)  # 3 images of each of 48 modes
    run = base / "run"
    train(tiny_config(run, "train.steps=2", "train.checkpoint_every=2", "model.conditional=concat",
                      f"data.path={data}", "data.workers=0", "data.cache=memory"))
    yield {"weights": str(testing.inception_weights(base, seed=0)), "data": str(data), "run": run,
           "plain": testing.checkpoint(base / "plain")}
    mp.undo()


def test_flowergan_eval_intra_fd_names_every_class(env, capsys) -> None:
    from flowergan_eval.cli import app

    code, out = _eval(capsys, app, "intra_fd", "--ckpt", str(env["run"]), "--data", env["data"], "--n", "96",
                      "--inception-weights", env["weights"], "--json", "--no-progress")
    assert code == 0, out
    import json

    result = json.loads(out)
    metrics = result["metrics"]
    assert math.isfinite(metrics["intra_fd96/mean"]) and len(metrics) == 1 + 48  # the mean and each mode
    code, out = _eval(capsys, app, "intra_fd", "--ckpt", str(env["plain"]), "--data", env["data"], "--n", "8",
                      "--inception-weights", env["weights"], "--no-progress")
    assert code == 2 and "unconditional" in out and out.strip().count("\n") == 0


def test_in_training_intra_kid_of_a_conditional_g(env) -> None:
    G = open_generator(env["run"])
    out = api.in_training_metric(G, nz=100, metric="intra_kid", n=96, data=env["data"], device="cpu",
                                 inception_weights=env["weights"])
    assert list(out)[0] == "intra_kid96/mean" and math.isfinite(out["intra_kid96/mean"])
    assert sum(k.startswith("intra_kid96/") for k in out) == 1 + 48
    with pytest.raises(UserError, match="class-conditional"):
        api.in_training_metric(open_generator(env["plain"]), nz=16, metric="intra_kid", n=8, data=env["data"],
                               device="cpu", inception_weights=env["weights"])



def test_report_of_a_conditional_g_has_a_row_per_class_and_the_intra_class_scores(env, capsys, tmp_path) -> None:
    import json

    from flowergan_eval.cli import app

    out = tmp_path / "report.html"
    code, text = _eval(capsys, app, "report", "--ckpt", str(env["run"]), "--data", env["data"], "--n", "96",
                       "--inception-weights", env["weights"], "--out", str(out), "--json", "--no-progress")
    assert code == 0, text[-2000:]
    metrics = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]["metrics"]  # stderr's lines follow stdout
    assert math.isfinite(metrics["intra_fd96/mean"]) and math.isfinite(metrics["intra_kid96/mean"])
    page = out.read_text()
    assert "Per class: samples asked for as the class" in page
    assert page.count("alt=\"generated ") == 48 and page.count("alt=\"real ") == 48  # every mode: both rows


def _eval(capsys, app, *args: str) -> tuple[int, str]:
    """`flowergan-eval ARGS` in this process: (exit code, stdout + stderr)."""
    from _tiny_run import run_main

    code, out, err = run_main(capsys, *args, prog="flowergan-eval")
    return code, out + err



def test_d_features_of_a_concat_d_read_each_images_class() -> None:
    import torch
    from flowergan_eval.features import d_features

    from flowergan.models import Discriminator

    torch.manual_seed(0)
    D = Discriminator(8, 16, num_classes=3, conditional="concat")
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    a = d_features(D, images, labels=torch.zeros(6, dtype=torch.long), batch=4)
    b = d_features(D, images, labels=torch.full((6,), 2), batch=4)
    assert a.shape == (6, 16 * 4 * 4) and not np.allclose(a, b)
    plain = Discriminator(8, 16)
    assert d_features(plain, images).shape == (6, 16 * 4 * 4)  # an unconditional D needs no labels
