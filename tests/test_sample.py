"""`flowergan.generate` and `flowergan sample`: image i depends only on (seed, i) on any batch size and n, G's
eval-mode BatchNorm makes a sample independent of its batch-mates, the three formats hold the same pixels, and
torch-fidelity's own folder reader takes every PNG that `sample --format png` wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_run import run_main, tiny_run
from PIL import Image

from flowergan.artifacts import open_generator
from flowergan.generation import BLOCK, generate, latent_blocks

FLOWERGAN = [sys.executable, "-m", "flowergan"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("sample") / "run")


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([*FLOWERGAN, *map(str, args)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=cwd)


def test_same_images_on_any_batch_size_and_n(run):
    G = open_generator(run)
    n = BLOCK + 9  # crosses a block boundary
    ref = generate(G, n, seed=3, batch=n)
    assert ref.dtype == torch.uint8 and ref.shape == (n, 3, 64, 64)
    for batch in (1, 5, BLOCK, 100):
        assert torch.equal(generate(G, n, seed=3, batch=batch), ref), batch
    assert torch.equal(generate(G, 10, seed=3), ref[:10])  # the first images do not depend on n either
    assert not torch.equal(generate(G, 10, seed=4), ref[:10])
    assert G.training is False


def test_generate_restores_the_mode_and_uses_the_documented_z(run):
    G = open_generator(run).train()
    images = generate(G, 3, seed=1)
    assert G.training  # put back as it was
    z = next(latent_blocks(G.nz, 1))[:3]
    with torch.no_grad():
        x = G.eval()(z)
    assert torch.equal(images, ((x.clamp(-1, 1) * 0.5 + 0.5) * 255 + 0.5).clamp(0, 255).to(torch.uint8))


def test_eval_mode_batchnorm_makes_a_sample_independent_of_its_batch_mates(run):
    G = open_generator(run)
    z = next(latent_blocks(G.nz, 0))
    other = z.clone()
    other[1:] = torch.randn(BLOCK - 1, G.nz, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(G.eval()(z)[0], G(other)[0])
        # The check can fail: with the batch's own statistics (train mode) the same z gives another image.
        assert not torch.allclose(G.train()(z)[0], G(other)[0])
    G.eval()


def test_png_npz_and_grid_hold_the_same_pixels(run, tmp_path, capsys):
    n = 37
    # --device cpu: compared bit for bit with `generate` on the CPU below (auto would take a GPU where there is one).
    r = cli("sample", "--ckpt", run, "--format", "png", "--n", n, "--batch", 8, "--seed", 2,
            "--out", tmp_path / "png", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    code, out, err = run_main(capsys, "sample", "--ckpt", run, "--format", "npz", "--n", n, "--batch", 5,
                              "--seed", 2, "--out", tmp_path / "s.npz", "--no-progress", "--device", "cpu")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 's.npz'} (37 images, npz, seed 2"), err
    code, _, err = run_main(capsys, "sample", "--ckpt", run, "--n", 4, "--seed", 2, "--out", tmp_path / "grid.png",
                            "--device", "cpu")
    assert code == 0 and "sample" in err, err  # the progress bar is on stderr
    files = sorted((tmp_path / "png").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(n)]
    pngs = np.stack([np.asarray(Image.open(f)) for f in files])
    with np.load(tmp_path / "s.npz") as npz:
        assert list(npz.keys()) == ["images"]
        images = npz["images"]
    assert images.dtype == np.uint8 and images.shape == (n, 64, 64, 3)
    assert np.array_equal(pngs, images)
    expected = generate(open_generator(run), n, seed=2).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, expected)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * 66, 2 + 2 * 66, 3)  # 2x2 images, 2 px padding (torchvision's make_grid)
    assert np.array_equal(grid[2:66, 68:132], expected[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "png", "s.npz"]  # no temporary left


@pytest.mark.slow  # building the random Inception weights and two CPU Inception passes: 9-25 s on 2 busy cores
def test_torch_fidelity_reads_every_png_that_sample_wrote(run, tmp_path, capsys):
    """torch-fidelity's own folder reader and extractor (random but fixed weights) on `sample --format png`:
    every file is read, the pixels are the generated ones, and its features equal the eval package's."""
    from flowergan_eval import features as FT
    from flowergan_eval import testing
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset, prepare_input_from_id

    n = 6  # each image is a 299x299 Inception pass on the CPU, twice
    code, _, err = run_main(capsys, "sample", "--ckpt", run, "--format", "png", "--n", n, "--out", tmp_path / "png")
    assert code == 0, err
    ds = prepare_input_from_id(1, input1=str(tmp_path / "png"), samples_find_deep=False, verbose=False)
    assert len(ds) == n
    expected = generate(open_generator(run), n, seed=0)
    assert all(torch.equal(ds[i], expected[i]) for i in range(n))

    weights = testing.inception_weights(tmp_path, seed=0)
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False,
                                         feature_extractor_weights_path=str(weights))
    theirs = get_featuresdict_from_dataset(ds, extractor, batch_size=3, cuda=False, save_cpu_ram=True,
                                           verbose=False)["2048"]
    ours = FT.extract(FT.load_inception(str(weights)), expected.split(3), n).pool
    assert theirs.shape == (n, 2048)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--format", "jpeg"], "'jpeg' is not one of 'grid', 'png', 'npz'"),
    (["--format", "grid", "--n", "5000"], "a grid holds at most 4096 images"),
])
def test_bad_options_are_one_line(run, tmp_path, capsys, args, message):
    code, _, err = run_main(capsys, "sample", "--ckpt", run, "--out", tmp_path / "x", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_unwritable_or_taken_out_is_one_line_and_writes_nothing(run, tmp_path, capsys):
    code, _, err = run_main(capsys, "sample", "--ckpt", tmp_path / "nope", "--format", "png", "--out", tmp_path / "png")
    assert code == 2 and err.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'nope'} does not exist (pass a run directory or a checkpoint directory)"]
    (tmp_path / "file").write_text("not a folder")
    for fmt in ("png", "npz", "grid"):
        code, _, err = run_main(capsys, "sample", "--ckpt", run, "--format", fmt, "--out", tmp_path / "file" / "out")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--out {tmp_path / 'file' / 'out'}: cannot write there" in err
    (tmp_path / "taken.npz").write_bytes(b"old")
    code, _, err = run_main(capsys, "sample", "--ckpt", run, "--format", "npz", "--out", tmp_path / "taken.npz")
    assert code == 2 and "already exists" in err and "--force" in err
    assert (tmp_path / "taken.npz").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.npz"]
    code, _, err = run_main(capsys, "sample", "--ckpt", run, "--format", "npz", "--n", 3,
                            "--out", tmp_path / "taken.npz", "--force")
    assert code == 0, err
    assert np.load(tmp_path / "taken.npz")["images"].shape == (3, 64, 64, 3)


def test_a_failure_while_writing_leaves_nothing_behind(run, tmp_path, monkeypatch):
    """Interrupted half way (the disk fills, Ctrl-C): the temporary folder goes, --out never appears."""
    from typer.testing import CliRunner

    from flowergan.cli import _register, app
    from flowergan.cli import sample as sample_cli

    _register()
    written = []

    def fail_after_two(batches, n, folder):
        for i, _ in enumerate(batches):
            written.append(sorted(p.name for p in folder.parent.iterdir()))
            if i == 1:
                raise OSError(28, "No space left on device")

    monkeypatch.setitem(sample_cli.WRITERS, "png", fail_after_two)
    r = CliRunner().invoke(app, ["sample", "--ckpt", str(run), "--format", "png", "--n", "20", "--batch", "4",
                                 "--out", str(tmp_path / "png"), "--no-progress"])
    assert isinstance(r.exception, OSError)
    assert written and written[0][0].startswith(".tmp-png-")  # it was writing into a temporary folder
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_samples_do_not_depend_on_the_batch_size(run):
    """On the GPU too (cuDNN picks kernels per shape, hence the fixed forward shape); close to the CPU's."""
    G = open_generator(run, device="cuda")
    ref = generate(G, BLOCK + 9, seed=1, batch=BLOCK + 9)
    for batch in (1, 7, BLOCK):
        assert torch.equal(generate(G, BLOCK + 9, seed=1, batch=batch), ref), batch
    cpu = generate(open_generator(run), BLOCK + 9, seed=1)
    assert (ref.int() - cpu.int()).abs().max() <= 1  # fp32 on two devices: at most one uint8 step apart
