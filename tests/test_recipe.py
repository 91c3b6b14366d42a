"""The recipe knobs of issue 12 end to end: their config fields and validation, G's BatchNorm at sampling time
(`model.g_sample_bn`: recomputed statistics), and R1 / PacGAN packing through the real training loop and export."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from _tiny_run import tiny_run
from safetensors.torch import load_file
from torch import nn

from flowergan.artifacts.checkpoint import read_generator, resolve_checkpoint
from flowergan.config import Config, ConfigError, load_config
from flowergan.export import export
from flowergan.generation import BN_BATCHES, BN_SEED, for_sampling, latent_blocks, recompute_bn_stats
from flowergan.models import Generator

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_defaults_keep_the_recipe_as_it_was() -> None:
    cfg = Config()
    assert (cfg.model.d_pack, cfg.model.d_mbstd, cfg.model.g_sample_bn) == (1, 0, "eval")
    assert (cfg.train.r1_gamma, cfg.train.r1_every, cfg.train.ema_warmup) == (0.0, 1, 10.0)
    assert (cfg.train.real_label, cfg.train.fake_label, cfg.train.ema, cfg.train.ema_decay) == (0.9, 0.1, True, 0.999)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (("model.d_pack=3",), ["model.d_pack", "3", "64"]),  # 64 images do not pack in threes
        (("model.d_pack=8", "train.batch_size=48", "cluster.workers=4"), ["model.d_pack", "per-rank batch 12"]),
        (("model.d_pack=0",), ["model.d_pack", ">= 1"]),
        (("model.d_mbstd=5",), ["model.d_mbstd", "5", "64"]),  # 64 fakes do not split into groups of 5
        (("model.d_mbstd=3", "model.d_pack=2", "train.batch_size=32"), ["model.d_mbstd", "per-rank batch 16"]),
        (("model.d_mbstd=-1",), ["model.d_mbstd", ">= 0"]),
        (("model.g_sample_bn=train",), ["model.g_sample_bn", "eval", "batch"]),
        (("train.r1_gamma=-1",), ["train.r1_gamma", ">= 0.0"]),
        (("train.r1_every=0",), ["train.r1_every", ">= 1"]),
        (("train.ema_warmup=-5",), ["train.ema_warmup", ">= 0.0"]),
    ],
)
def test_knob_validation_names_the_field(overrides: tuple[str, ...], names: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides))
    assert "\n" not in str(e.value)
    for name in names:
        assert name in str(e.value), f"{name!r} not in {e.value}"
    assert load_config(None, ["model.d_pack=4", "train.batch_size=64", "cluster.workers=4"]).model.d_pack == 4
    assert load_config(None, ["model.d_mbstd=4", "model.d_pack=2"]).model.d_mbstd == 4


def _trained_like_g(seed: int = 0) -> Generator:
    """A 16 px G whose running statistics are far from its batches' (as after fast training or EMA)."""
    torch.manual_seed(seed)
    G = Generator(8, 4, 16)
    for m in G.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(9.0)
    return G


def test_recomputed_statistics_are_the_mean_over_fixed_batches_of_z() -> None:
    G = _trained_like_g()
    first_bn = G.main[1]
    # By hand: the first BN sees ConvTranspose(z); its recomputed mean is the average of the batch means.
    blocks = latent_blocks(G.nz, BN_SEED)
    with torch.no_grad():
        want = torch.stack([G.main[0](next(blocks)[:, :, None, None]).mean(dim=(0, 2, 3))
                            for _ in range(BN_BATCHES)]).mean(dim=0)
    out = recompute_bn_stats(G)
    assert out is G and not G.training
    assert torch.allclose(first_bn.running_mean, want, atol=1e-6)
    assert first_bn.momentum == 0.1  # put back
    again = copy.deepcopy(G)
    recompute_bn_stats(again)  # train-mode BN ignores the old statistics: recomputing changes nothing
    assert all(torch.equal(a, b) for a, b in zip(G.buffers(), again.buffers(), strict=True))


def test_for_sampling_batch_leaves_g_alone_and_changes_its_samples() -> None:
    G = _trained_like_g().train()
    before = [b.clone() for b in G.buffers()]
    assert for_sampling(G, "eval") is G
    S = for_sampling(G, "batch")
    assert S is not G and G.training and not S.training
    assert all(torch.equal(a, b) for a, b in zip(before, G.buffers(), strict=True))
    z = next(latent_blocks(G.nz, 5))
    with torch.no_grad():
        stale = G.eval()(z)
        fresh = S(z)
        assert not torch.allclose(stale, fresh, atol=1e-3)  # the check can fail: statistics matter here
        # Still eval mode: a sample does not depend on its batch-mates.
        assert torch.allclose(S(z[:1]), fresh[:1], atol=1e-6)
    with pytest.raises(ValueError, match="g_sample_bn"):
        for_sampling(G, "train")


def test_for_sampling_a_sync_batchnorm_g_uses_plain_batchnorm() -> None:
    """cluster.sync_batchnorm converts G's BatchNorm in place; rank 0 alone recomputes statistics and samples, so
    a SyncBatchNorm in train mode there would issue collectives no other rank joins (a hang until the process
    group's timeout). The copy sampled from has plain BatchNorm with G's parameters and statistics."""
    G = _trained_like_g().train()
    plain_samples = for_sampling(copy.deepcopy(G), "batch")
    G_sync = nn.SyncBatchNorm.convert_sync_batchnorm(G)
    S = for_sampling(G_sync, "batch")
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in S.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in G_sync.modules())  # the training G is left alone
    z = next(latent_blocks(G.nz, 5))
    with torch.no_grad():
        assert torch.equal(S(z), plain_samples(z))


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("recipe") / "run", "model.g_sample_bn=batch", "train.r1_gamma=1",
                    "model.d_pack=2")


def test_loop_saves_g_ema_with_recomputed_statistics_and_trains_with_r1_and_packing(batch_run: Path) -> None:
    ckpt = resolve_checkpoint(batch_run)
    tensors = load_file(str(ckpt / "models.safetensors"))
    ema_mean = tensors["G_ema.main.1.running_mean"]
    assert not torch.equal(ema_mean, tensors["G.main.1.running_mean"])  # not G's copied statistics
    G_ema, cfg = read_generator(batch_run)
    assert cfg.model.g_sample_bn == "batch" and cfg.model.d_pack == 2 and cfg.train.r1_gamma == 1.0
    assert torch.equal(recompute_bn_stats(copy.deepcopy(G_ema)).main[1].running_mean, ema_mean)
    logged = [json.loads(line) for line in (batch_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["Loss/D"] for r in logged if "Loss/D" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert D_first_conv_channels(tensors) == 6  # D judged pairs of images
    assert sorted(p.name for p in (batch_run / "samples").glob("*.png"))


def D_first_conv_channels(tensors: dict[str, torch.Tensor]) -> int:
    return int(tensors["D.features.1.weight"].shape[1])  # features.0 is the Pack layer


def test_export_of_a_batch_run_says_how_its_statistics_were_made(batch_run: Path, tmp_path: Path) -> None:
    out = export(batch_run, tmp_path / "g")
    meta = json.loads((out / "config.json").read_text())
    assert "recomputed" in meta["batchnorm"] and meta["model"]["g_sample_bn"] == "batch"
    assert "recomputed" in (out / "README.md").read_text()
    G_ema, _ = read_generator(batch_run)
    exported = load_file(str(out / "model.safetensors"))
    assert torch.equal(exported["main.1.running_mean"], G_ema.main[1].running_mean)


@pytest.mark.slow  # two tiny trainings plus the oracle and SynthNet fitted on the 256 shards: ~1 min on 2 cores
def test_quality_benchmark_prints_both_recipes_and_the_ratio(shards: Path, tmp_path: Path, monkeypatch, capsys
                                                             ) -> None:
    import importlib.util

    monkeypatch.setenv("FLOWERGAN_CACHE_DIR", str(tmp_path / "cache"))  # the oracle and SynthNet of these shards
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--synth", str(shards), "--steps", "2", "--ngf", "4", "--batch", "8", "--n", "64", "--threads", "1",
            "--out", str(tmp_path / "q")]
    bench.main(args)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("quality ratio=") and float(out[-1].split("=")[1]) > 0
    rows = [json.loads(line) for line in out if line.startswith("{")]
    assert [r["recipe"] for r in rows] == ["tutorial", "flowergan"]
    assert all("synth_fd64" in r and 0 <= r["modes_covered"] <= 48 for r in rows)
    assert {p.name for p in (tmp_path / "q").glob("*.png")} == {"quality-tutorial.png", "quality-flowergan.png",
                                                                  "quality-side-by-side.png"}
    tutorial = load_config(tmp_path / "q" / "run-tutorial" / "config.toml")
    assert (tutorial.train.real_label, tutorial.train.fake_label, tutorial.train.ema) == (1.0, 0.0, False)
    # --reuse scores the finished runs again without training: the same numbers, no new checkpoint written.
    mtime = (tmp_path / "q" / "run-flowergan" / "train.json").stat().st_mtime
    bench.main([*args, "--reuse"])
    again = capsys.readouterr().out.strip().splitlines()
    assert again[-1] == out[-1] and (tmp_path / "q" / "run-flowergan" / "train.json").stat().st_mtime == mtime
    # --score-run samples that run's raw G (train.ema=false changes sampling, not training): no training, other
    # numbers; a knob that changes training is refused.
    bench.main([*args, "--recipes", "flowergan", "--score-run", "", "--tag", "raw", "--set", "train.ema=false"])
    raw = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert raw[0]["train_s"] == rows[1]["train_s"] and raw[0]["synth_fd64"] != rows[1]["synth_fd64"]
    assert (tmp_path / "q" / "quality-raw-flowergan.png").is_file()
    assert not (tmp_path / "q" / "run-raw-flowergan").exists()
    with pytest.raises(SystemExit, match="only model.g_sample_bn, train.ema may differ"):
        bench.main([*args, "--recipes", "flowergan", "--score-run", "", "--set", "train.r1_gamma=3"])
    # --every scores each kept checkpoint and says whether the targets were met; --extend continues that run.
    curve_args = [*args[:-1], str(tmp_path / "c"), "--recipes", "flowergan", "--every", "1"]
    bench.main(curve_args)
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["curve"]["step"] for line in out if line.startswith('{"curve"')] == [1, 2]
    assert any(line.startswith("flowergan: targets (48/48 modes, KL <= 0.05 nats) not met by step 2") for line in out)
    first = tmp_path / "c" / "run-flowergan" / "checkpoints" / "step-00000001"
    mtime = (first / "models.safetensors").stat().st_mtime
    (tmp_path / "c" / "run-flowergan" / "train.json").unlink()  # as a run stopped before its end leaves it
    bench.main([*curve_args, "--extend", "--steps", "4"])
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["curve"]["step"] for line in out if line.startswith('{"curve"')] == [1, 2, 3, 4]
    assert (first / "models.safetensors").stat().st_mtime == mtime  # extended from step 2, not trained again
    kept = (tmp_path / "c" / "run-flowergan" / "curve.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in kept] == [1, 2, 3, 4]  # steps 1 and 2 were not scored again
    with pytest.raises(SystemExit):
        bench.main([*curve_args, "--every", "3"])  # must divide --steps
    for bad, field in ((["--set", "model.d_mbstd=5"], "model.d_mbstd"), (["--set", "steps=3"], "section.key=value"),
                       (["--recipes", "tutorial,gan"], "--recipes")):
        with pytest.raises(SystemExit):
            bench.main([*args, *bad])  # refused before anything trains: one line naming the field
        assert field in capsys.readouterr().err
