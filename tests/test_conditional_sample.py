"""A conditional G after training: `flowergan sample --class/--per-class`, export with class names and (z, y)
graphs, `flowergan.generate(..., classes=...)`; same seed and class give the same image on any --batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _core import ClassStream, tiny_config
from _tiny_run import run_main, tiny_run
from PIL import Image

import flowergan
from flowergan.export import export
from flowergan.train.loop import train

NAMES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cond") / "run"
    train(tiny_config(run, "train.steps=6", "train.checkpoint_every=6", "log.sample_every=6",
                      "model.conditional=projection"), stream=ClassStream(3))
    return run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    return export(run, tmp_path_factory.mktemp("out") / "cond-g", formats="safetensors,pt2,onnx")


def _npz(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["images"]


def test_class_by_name_or_index_and_the_same_images_on_any_batch(run, tmp_path, capsys) -> None:
    outs = {}
    for name, cls, batch in (("a", "class1", 64), ("b", "1", 5), ("c", "class2", 5)):
        code, _, err = run_main(capsys, "sample", "--ckpt", run, "--format", "npz", "--n", 9, "--batch", batch,
                                "--class", cls, "--out", tmp_path / f"{name}.npz", "--no-progress")
        assert code == 0, err
        outs[name] = _npz(tmp_path / f"{name}.npz")
    assert np.array_equal(outs["a"], outs["b"])  # a name and its index, batch 64 and 5: the same pixels
    assert not np.array_equal(outs["a"], outs["c"])  # another class, the same z's: other images
    G = flowergan.load_generator(run)
    api = flowergan.generate(G, 9, classes="class1", batch=4)
    assert np.array_equal(api.permute(0, 2, 3, 1).numpy(), outs["a"])
    assert G.class_names == NAMES


def test_unknown_class_lists_the_allowed_ones_and_an_unconditional_g_refuses_class(run, tmp_path, capsys) -> None:
    code, out, err = run_main(capsys, "sample", "--ckpt", run, "--class", "rose", "--out", tmp_path / "x.png")
    assert code == 2 and err.strip().count("\n") == 0
    assert "unknown class 'rose'; allowed: class0, class1, class2" in err
    code, _, err = run_main(capsys, "sample", "--ckpt", run, "--class", "7", "--out", tmp_path / "x.png")
    assert code == 2 and "outside 0..2" in err
    plain = tiny_run(tmp_path / "plain", steps=2)
    for option in (["--class", "0"], ["--per-class", "2"]):
        code, _, err = run_main(capsys, "sample", "--ckpt", plain, *option, "--out", tmp_path / "y.png")
        assert code == 2 and "unconditional" in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_per_class_grid_has_one_named_row_per_class(run, tmp_path, capsys) -> None:
    code, out, err = run_main(capsys, "sample", "--ckpt", run, "--per-class", 4, "--out", tmp_path / "g.png",
                              "--no-progress")
    assert code == 0, err
    grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert grid.shape[0] == 2 + 3 * 66  # three rows of 64-px images
    margin = grid.shape[1] - (2 + 4 * 66)
    assert margin > 0 and (grid[:, :margin] < 128).any()  # the names, dark text in the white margin
    # Rows are the classes in order, each the same z_0..z_3: row 1 is `--class class1 --n 4`.
    code, _, _ = run_main(capsys, "sample", "--ckpt", run, "--per-class", 4, "--class", "class1", "--format", "npz",
                          "--out", tmp_path / "one.npz", "--no-progress")
    assert code == 0
    G = flowergan.load_generator(run)
    want = flowergan.generate(G, 4, classes=1)
    row = grid[2 + 66:2 + 66 + 64, margin + 2:margin + 2 + 64]
    assert np.array_equal(row, want[0].permute(1, 2, 0).numpy())
    assert np.array_equal(_npz(tmp_path / "one.npz"), want.permute(0, 2, 3, 1).numpy())


def test_export_carries_the_class_names_and_graphs_take_z_and_y(exported) -> None:
    import onnxruntime

    meta = json.loads((exported / "config.json").read_text())
    assert meta["classes"] == NAMES and meta["class_input"]["name"] == "y"
    assert meta["model"]["conditional"] == "projection" and meta["model"]["num_classes"] == 3
    card = (exported / "README.md").read_text()
    front = yaml.safe_load(card.removeprefix("---\n").partition("\n---\n")[0])
    assert front["flowergan"]["classes"] == NAMES and "class-conditional" in front["tags"]
    assert "class0, class1, class2" in card
    G = flowergan.load_generator(exported)
    program = torch.export.load(str(exported / "generator.pt2")).module()
    session = onnxruntime.InferenceSession(str(exported / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "y"]
    for batch in (1, 5):
        z = torch.randn(batch, G.nz, generator=torch.Generator().manual_seed(batch))
        y = torch.arange(batch) % 3
        with torch.no_grad():
            want = G(z, y)
            got = program(z, y)
        (got_onnx,) = session.run(None, {"z": z.numpy(), "y": y.numpy()})
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_onnx, want.numpy(), rtol=0, atol=1e-5)


def test_model_index_takes_a_per_class_metrics_mean_not_each_class(exported) -> None:
    from flowergan.artifacts.export_folder import model_config, read_config
    from flowergan.export.card import front_matter

    meta = read_config(exported)
    state = {"step": 6, "metrics": {"class_acc1k": 0.9, "class_acc1k/covered": 3.0, "class_acc1k/class0": 1.0,
                                    "intra_fd1k/mean": 12.0, "intra_fd1k/class2": 10.0}}
    card = front_matter(meta, state, model_config(exported, meta))
    indexed = {s["name"] for s in card["model-index"][0]["results"][0]["metrics"]}
    assert indexed == {"class_acc1k", "class_acc1k/covered", "intra_fd1k/mean"}
    assert {m["name"] for m in card["flowergan"]["metrics"]} == set(state["metrics"])  # all listed with provenance
