"""FID features and weights: our numbers equal torch-fidelity's own `calculate_metrics` on the same images and the
same (random) weights file; generated images are quantised as a saved PNG; weights are found in the documented
order, downloads are checksum-verified, and offline without weights is one line and exit code 2."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from flowergan_eval import features as FT
from flowergan_eval import metrics as M
from flowergan_eval import testing
from flowergan_eval import weights as W
from flowergan_eval.real import iter_real, open_real
from PIL import Image
from torchvision.utils import save_image

from flowergan.errors import UserError

N = 20  # images per side: IS needs >= 10 (its splits); each image costs a 299x299 Inception pass on the CPU


@pytest.fixture(scope="session")
def eval_base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session")
def weights_file(eval_base) -> Path:
    return testing.inception_weights(eval_base, seed=0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test may find (or download) the real weights, or write statistics into ~/.cache.
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(W.ENV_URL, f"http://127.0.0.1:{_closed_port()}/weights.pth")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_to_uint8_is_exactly_what_a_saved_png_holds(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g) * 2.4 - 1.2  # beyond [-1, 1] too: G's tanh can round to +-1
    x[0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255])
    for i in range(len(x)):
        save_image(x[i] * 0.5 + 0.5, tmp_path / f"{i}.png")  # what `flowergan sample` and most users do
    saved = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / f"{i}.png"))).permute(2, 0, 1)
                         for i in range(len(x))])
    assert torch.equal(FT.to_uint8(x), saved)


def test_project_fid_kid_is_equal_torch_fidelitys_calculate_metrics(tmp_path, eval_base, weights_file):
    """Generated images as PNG files and real shards, measured by torch-fidelity and by us (G directly)."""
    import torch_fidelity

    run = testing.checkpoint(eval_base / "run-varied", weight_std=0.15)
    from flowergan.artifacts.checkpoint import read_generator

    G, cfg = read_generator(run)
    z = FT.latents(N, cfg.model.nz, seed=0)
    gen_dir, real_dir = tmp_path / "generated", tmp_path / "real"
    gen_dir.mkdir()
    real_dir.mkdir()
    with torch.no_grad():
        for i, img in enumerate(G(z)):
            save_image(img * 0.5 + 0.5, gen_dir / f"{i:03d}.png")
    real = open_real(str(testing.synth_shards(eval_base, 200, seed=3)))
    real_x = torch.cat([x for x, _ in iter_real(real, n=N)])
    for i, img in enumerate(real_x):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(real_dir / f"{i:03d}.png")

    theirs = torch_fidelity.calculate_metrics(
        input1=str(gen_dir), input2=str(real_dir), isc=True, fid=True, kid=True, kid_subset_size=N, cuda=False,
        save_cpu_ram=True, cache=False, verbose=False, feature_extractor_weights_path=str(weights_file))

    ex = FT.load_inception(str(weights_file))
    assert not ex.official and "custom weights" in ex.name
    fake = FT.extract(ex, FT.generate(G, z, batch=8), N)  # straight from G: quantised in memory, no PNG
    ref = FT.extract(ex, real_x.split(8), N)
    ours_fid = M.fid_from_features(fake.pool, ref.pool)  # what the pipeline uses below 2048 images
    ours_kid, _, m = M.kid(fake.pool, ref.pool, subset_size=N)
    ours_is, _ = M.inception_score(fake.logits)
    assert m == N
    assert ours_fid > 1e-3 and ours_kid > 1e-6 and ours_is > 1.0 + 1e-6  # non-degenerate numbers
    assert ours_fid == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours_kid == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours_is == pytest.approx(theirs["inception_score_mean"], rel=1e-4)


def test_weights_search_order(tmp_path, monkeypatch, weights_file):
    explicit, env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    explicit.write_bytes(b"x")
    env.write_bytes(b"y")
    cached = W.cache_dir() / W.OFFICIAL_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"z")
    monkeypatch.setenv(W.ENV_WEIGHTS, str(env))
    assert W.locate_weights(str(explicit)) == explicit
    assert W.locate_weights(None) == env
    monkeypatch.delenv(W.ENV_WEIGHTS)
    assert W.locate_weights(None) == cached
    with pytest.raises(UserError, match="--inception-weights .*no such file"):
        W.locate_weights(str(tmp_path / "missing.pth"))
    monkeypatch.setenv(W.ENV_WEIGHTS, str(tmp_path / "gone.pth"))
    with pytest.raises(UserError, match=W.ENV_WEIGHTS):
        W.locate_weights(None)


def test_offline_without_weights_is_one_line_naming_three_ways_and_exit_2(tmp_path):
    run = testing.checkpoint(tmp_path / "run")
    env = {**os.environ, W.ENV_CACHE: str(tmp_path / "empty-cache"),
           W.ENV_URL: f"http://127.0.0.1:{_closed_port()}/weights.pth"}
    env.pop(W.ENV_WEIGHTS, None)
    data = testing.synth_shards(tmp_path, 16, seed=1)
    proc = subprocess.run([sys.executable, "-c", "from flowergan_eval.cli import main; main()", "fid", "--ckpt",
                           str(run), "--data", str(data), "--n", "4", "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "--inception-weights" in lines[0] and W.ENV_WEIGHTS in lines[0] and W.OFFICIAL_NAME in lines[0]
    assert not (tmp_path / "empty-cache" / W.OFFICIAL_NAME).exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a, **k: _Quiet(*a, directory=str(root), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_download_is_checksum_verified_and_atomic(tmp_path, http_root):
    root, url = http_root
    payload = os.urandom(3 << 20)
    (root / "w.pth").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "w.pth"
    assert W.fetch(f"{url}/w.pth", dest, good) == dest and dest.read_bytes() == payload
    bad_dest = tmp_path / "cache2" / "w.pth"
    with pytest.raises(UserError, match="SHA-256"):
        W.fetch(f"{url}/w.pth", bad_dest, "0" * 64)
    assert not bad_dest.exists() and list(bad_dest.parent.iterdir()) == []  # no half file left behind


def test_locate_downloads_into_the_cache_from_a_mirror(tmp_path, http_root, monkeypatch):
    root, url = http_root
    (root / W.OFFICIAL_NAME).write_bytes(b"not the real weights")
    monkeypatch.setenv(W.ENV_URL, f"{url}/{W.OFFICIAL_NAME}")
    # The mirror serves the wrong bytes: refused, with the checksum named, and nothing cached.
    with pytest.raises(UserError, match="SHA-256"):
        W.locate_weights(None)
    assert not (W.cache_dir() / W.OFFICIAL_NAME).exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_weights_that_need_unpickling_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv.weight": _Evil()}, f)
    with pytest.raises(UserError, match="not a loadable Inception weights file"):
        FT.load_inception(str(path))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(2)}, wrong)
    with pytest.raises(UserError, match="TF-Inception"):
        FT.load_inception(str(wrong))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_and_kid_match_the_cpu(weights_file):
    g = torch.Generator().manual_seed(0)
    x = (torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic")
         .clamp(0, 1) * 255).to(torch.uint8)
    cpu = FT.load_inception(str(weights_file), device="cpu")(x)
    gpu = FT.load_inception(str(weights_file), device="cuda")(x)
    for a, b in zip(cpu, gpu):  # no TF32: fp32 convolutions on both (cuDNN may pick other algorithms)
        assert float((a - b.cpu()).abs().max() / a.abs().max()) < 1e-3
    f = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    h = np.random.default_rng(1).standard_normal((300, 64)).astype(np.float32) + 0.2
    assert M.kid(f, h, subsets=20, device="cuda")[0] == pytest.approx(M.kid(f, h, subsets=20)[0], rel=1e-9)
