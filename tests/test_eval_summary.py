"""The report's reading of its numbers (grouping, what misleads, the verdict), the time estimate's arithmetic and the
frames of samples over training: pure functions, checked on numbers whose answer is known."""

from __future__ import annotations

import re

import pytest
import torch
from flowergan_eval import estimate as E
from flowergan_eval import runfiles
from flowergan_eval import summary as S

from flowergan import visuals


def test_kid_std_is_dropped_only_when_every_subset_holds_all_generated_images():
    small = {"kid12": 0.1, "kid12/std": 0.01, "kid12/subset_size": 12.0}
    assert "kid12/std" not in S.drop_misleading(small, 12)
    large = {"kid2k": 0.1, "kid2k/std": 0.01, "kid2k/subset_size": 1000.0}
    assert S.drop_misleading(large, 2000) == large  # subsets of 1,000 out of 2,000: the std means something


def test_metrics_fall_into_fidelity_diversity_and_memorisation():
    keys = ["synth_fd2k", "prdc2k/precision", "prdc2k/coverage", "ms_ssim2k/generated", "modes2k/covered",
            "near_dup2k/rate", "memorisation2k/nn_ratio", "kid2k"]
    groups = S.grouped(dict.fromkeys(keys, 1.0))
    assert groups == {"fidelity": ["synth_fd2k", "prdc2k/precision", "kid2k"],
                      "diversity": ["prdc2k/coverage", "ms_ssim2k/generated", "modes2k/covered"],
                      "memorisation": ["near_dup2k/rate", "memorisation2k/nn_ratio"]}
    assert S.split_key("prdc12/coverage") == ("prdc", "coverage") and S.facts("modes1k/kl_uniform")[1] == "lower"


@pytest.mark.parametrize("fd, words", [(30.0, "close to real"), (60.0, "visibly off"), (300.0, "far from real")])
def test_verdict_reads_each_score_against_real_vs_real(fd, words):
    metrics = {"synth_fd2k": fd, "ms_ssim2k/generated": 0.40, "ms_ssim2k/real": 0.20, "modes2k/covered": 20,
               "modes2k/of": 48, "modes2k/kl_uniform": 1.39}
    reference = {"synth_fd2k": 25.0, "modes2k/covered": 48, "modes2k/kl_uniform": 0.01}
    fidelity, diversity, modes = S.verdict(metrics, reference, 2000)
    assert fidelity.startswith(f"Fidelity: {words}") and "against 25 for real vs real" in fidelity
    assert f"({fd / 25:.1f}x)" in fidelity
    assert "more alike than real images" in diversity  # 0.40 between samples against 0.20 between real images
    assert modes == "Mode coverage: 20 of 48 modes, KL(modes || uniform) 1.39 nats; 48 modes, KL 0.01 for real " \
                    "images at the same N."
    assert "about as varied" in S.verdict({"ms_ssim1k/generated": 0.21, "ms_ssim1k/real": 0.20}, {}, 1000)[1]


def test_estimate_adds_measured_costs_and_names_an_n_that_fits():
    est = E.estimate(n=10_000, g_s=0.001, readers={"inception": (0.05, 4096)}, train_images=0)
    assert est.seconds == pytest.approx(10_000 * 0.051 + 4096 * 0.05)
    line = E.warning(est, 10_000, "cpu")
    assert line and line.startswith(f"warning: this will take about {E.clock(est.seconds)} on cpu")
    fits = int(re.search(r"--n (\d+) takes about", line).group(1))
    assert est.seconds_for(fits) <= E.WARN_AFTER_S < est.seconds_for(fits + 100)
    assert E.warning(E.estimate(n=100, g_s=0.001, readers={"synth": (0.0001, 480)}), 100, "cpu") is None
    assert E.clock(5000) == "1 h 23 min" and E.clock(90) == "2 min" and E.clock(0.2) == "1 s"


def test_progress_frames_span_training_first_and_last_kept(tmp_path):
    for step in range(0, 1001, 100):  # 11 grids, as the trainer names them (G_ema's win over the raw G's)
        for tag in ("ema", "raw"):
            grid = visuals.to_grid(torch.rand(4, 3, 64, 64) * 2 - 1)
            visuals.save_png(grid, tmp_path / "samples" / f"{tag}-{step:08d}.png")
    frames = runfiles.progress_frames(tmp_path, max_frames=5, width=64)
    assert [step for step, _ in frames] == [0, 200, 500, 800, 1000]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png in frames)
    assert runfiles.progress_frames(tmp_path / "nothing") == []
    recipe = dict(runfiles.recipe({"train": {"r1_gamma": 1.0, "ema": True}, "model": {"ngf": 32}}))
    assert recipe == {"ngf": 32, "EMA of G": True, "R1 gamma": 1.0}
