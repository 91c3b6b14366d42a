"""The HTML report, opened in headless Chromium: it renders (non-blank screenshot) and every inline image loads;
loss curves come from the run's real TensorBoard event files (or metrics.jsonl); latent maths and pictures."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from flowergan_eval import latent as L
from flowergan_eval import report as R
from flowergan_eval import testing
from flowergan_eval import weights as W
from flowergan_eval.cli import app
from PIL import Image
from typer.testing import CliRunner

from flowergan.train.observe.logs import RunLogger

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
STEPS = list(range(0, 101, 20))


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"chromium is not installed ({CHROMIUM}); CI must install it (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); required when CI is set")


def _log_run(run: Path) -> None:
    """Scalars as the trainer logs them: TensorBoard events + metrics.jsonl (the real RunLogger), an in-training
    metric every other step, and fixed-noise sample grids written by the trainer's SampleWriter."""
    from flowergan.artifacts import open_generator
    from flowergan.train.observe.logs import NullLogger
    from flowergan.train.observe.samples import SampleWriter

    logger = RunLogger(run, tensorboard=True)
    for s in STEPS:
        logger.scalars(s, {"Loss/D": 1.4 - s / 200, "Loss/G": 0.7 + s / 150, "D/real": 0.5 + s / 400,
                           "D/fake_before": 0.5 - s / 400, "D/fake_after": 0.45, "Speed/img_per_s": 100.0})
        if s % 40 == 0:
            logger.scalars(s, {"Eval/kid1k": 0.5 - s / 400, "Eval/kid1k/std": 0.01})
    logger.close()
    G = open_generator(run)
    writer = SampleWriter(run, NullLogger(), torch.randn(16, 16, generator=torch.Generator().manual_seed(0)),
                          "eval", enabled=True)
    for s in STEPS:
        writer.write(s, G, G)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = testing.checkpoint(tmp_path_factory.mktemp("report") / "run", weight_std=0.15)
    _log_run(run)
    return run


SECTIONS = ("summary", "left-out", "fidelity", "diversity", "memorisation", "samples", "progress", "curves",
            "in-training", "closest", "latent", "recipe", "provenance")


def test_scalars_are_read_back_from_tensorboard_events_then_metrics_jsonl(run_dir, tmp_path):
    scalars = R.read_scalars(run_dir)
    assert scalars["Loss/D"][0] == STEPS
    assert scalars["Loss/G"][1] == pytest.approx([0.7 + s / 150 for s in STEPS], rel=1e-6)  # float32 in events
    assert "TensorBoard events" in R.scalars_source(run_dir)
    only_jsonl = tmp_path / "run"
    only_jsonl.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", only_jsonl / "metrics.jsonl")
    with open(only_jsonl / "metrics.jsonl", "a") as f:
        f.write('{"step": 120, "Loss/D"')  # a line cut short by a crash is skipped
    fallback = R.read_scalars(only_jsonl)
    assert fallback["D/real"][0] == STEPS and "metrics.jsonl" in R.scalars_source(only_jsonl)
    assert R.read_scalars(tmp_path / "empty") == {}
    png = R.loss_curves_png(scalars)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_self_contained_and_renders_in_chromium(run_dir, tmp_path_factory, tmp_path, monkeypatch):
    chromium = _chromium_or_skip()
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(W.ENV_WEIGHTS, str(testing.inception_weights(base, seed=0)))
    monkeypatch.setenv(W.ENV_URL, "http://127.0.0.1:9/never-downloaded.pth")
    data = testing.synth_shards(base, 40, seed=5)
    out = tmp_path / "site" / "report.html"
    result = CliRunner().invoke(app, ["report", "--ckpt", str(run_dir), "--data", str(data), "--n", "12",
                                      "--ref-n", "12", "--out", str(out), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads(result.stdout)
    assert {"fid12", "kid12", "is12", "prdc12/coverage", "synth_fd12", "ms_ssim12/generated",
            "ndb12/js"} <= set(r["metrics"])
    # Every KID subset holds all 12 generated images: its std would only measure the draw of real ones.
    assert "kid12/std" not in r["metrics"] and r["metrics"]["kid12/subset_size"] == 12
    # Real vs real on the same N beside the scores (12 of the 40 real images against the other 28).
    assert {"fid12", "kid12", "synth_fd12", "prdc12/coverage", "ndb12/js"} <= set(r["reference"])
    assert r["reference"]["fid12"] < r["metrics"]["fid12"]  # an untrained G is further from real than real is
    # 40 SynthFlowers cannot train a 48-mode oracle: the plan leaves modes out and says why.
    assert "modes" not in r["plan"]["metrics"] and any("too few" in x["why"] for x in r["plan"]["left_out"])
    page = out.read_text()
    # Self-contained: every image is inline, nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert page.count("data:image/png;base64,") >= 8 and "data:image/gif;base64," in page
    assert "TensorBoard events" in page and "tf1-bilinear 64-&gt;299" in page and "fid12" in page
    assert "latent_pca" not in page and "PCA of z" not in page  # an isotropic z has no direction to show
    assert "Fidelity: far from real images" in page and "lr G" in page  # the verdict; the recipe

    profile = tmp_path / "chromium-profile"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    shot = tmp_path / "shot.png"
    # Tall enough to reach past the summary and the metric tables (text only) to the samples.
    proc = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,4000", out.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (4000, 1200)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # text, plots, samples
    dom = subprocess.run(flags + ["--virtual-time-budget=10000", "--dump-dom", out.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    marker = re.search(r'<body[^>]*data-images="(\d+)/(\d+)"', dom)
    assert marker, "the page's load check did not run"
    loaded, total = int(marker.group(1)), int(marker.group(2))
    assert total >= 9 and loaded == total  # every inline image decoded
    # The sections, in the order a reader meets them, in the DOM the browser built.
    at = [dom.find(f'id="{name}"') for name in SECTIONS]
    assert all(i >= 0 for i in at), [n for n, i in zip(SECTIONS, at) if i < 0]
    assert at.index(min(at)) == 0 and dom.find('id="summary"') < dom.find('id="fidelity"') < dom.find('id="recipe"')
    frames = re.findall(r'alt="step (\d+)"', dom)
    assert frames == [str(s) for s in STEPS]  # samples over training: the run's six grids


@pytest.mark.slow  # ~60 images through EfficientNet-Lite2 at 260 px
def test_report_in_offline_imagenet_features(run_dir, tmp_path_factory, tmp_path, monkeypatch):
    """`--features effnet-lite2`: no Inception weights anywhere, the Fréchet distance is named effnet_fd (never fid)
    and IS, which needs ImageNet logits, is left out."""
    from flowergan_eval.commands import report_metrics

    assert report_metrics("") == ["fid", "kid", "is", "prdc"] and report_metrics("synth")[0] == "synth_fd"
    assert report_metrics("dinov2.pt") == ["fid", "kid", "prdc"]
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(W.ENV_URL, "http://127.0.0.1:9/never-downloaded.pth")
    data = testing.synth_shards(tmp_path_factory.getbasetemp(), 40, seed=5)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--ckpt", str(run_dir), "--data", str(data), "--n", "12",
                                      "--ref-n", "12", "--out", str(out), "--json", "--no-progress",
                                      "--features", "effnet-lite2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads(result.stdout)
    assert {"effnet_fd12", "kid12", "prdc12/coverage"} <= set(r["metrics"])
    assert not any(k.startswith(("fid", "is")) for k in r["metrics"])
    assert "effnet-lite2 imagenet" in out.read_text()


def test_latent_command_writes_its_pictures(run_dir, tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    data = testing.synth_shards(tmp_path_factory.getbasetemp(), 40, seed=5)
    out = tmp_path / "latent"
    result = CliRunner().invoke(app, ["latent", "--ckpt", str(run_dir), "--data", str(data), "--n", "16", "--out",
                                      str(out), "--gif", "--json", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["d_features_pca.png", "interp_lerp.png", "interp_slerp.gif", "interp_slerp.png",
                     "latent_pca.png"]
    grid = Image.open(out / "interp_slerp.png")
    assert grid.size == (10 * 66 + 2, 6 * 66 + 2)  # 6 pairs x 10 steps of 64 px with 2 px gaps
    assert Image.open(out / "interp_slerp.gif").n_frames == 2 * 10 - 2  # ping-pong


def test_interpolation_and_pca_maths():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    t = torch.linspace(0, 1, 9)
    for fn in (L.lerp, L.slerp):
        path = fn(a, b, t)
        assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    norms = L.slerp(a / a.norm(), b / b.norm(), t).norm(dim=1)
    assert torch.allclose(norms, torch.ones(9), atol=1e-5)  # slerp stays on the sphere; lerp cuts inside
    assert L.lerp(a / a.norm(), b / b.norm(), t)[4].norm() < 0.9
    assert torch.allclose(L.slerp(a, a, t), a.expand(9, -1))  # parallel ends: no division by sin(0)
    x = np.random.default_rng(0).standard_normal((500, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    proj, ratio = L.pca(x, 2)
    assert proj.shape == (500, 2) and ratio[0] > ratio[1] > 0.1 and ratio[0] == pytest.approx(25 / 30.26, abs=0.05)
    with pytest.raises(ValueError):
        L.interpolation_latents(8, 2, 3, 0, "cubic")
