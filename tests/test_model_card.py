"""The export folder's model card as a model hub user acts on it: front matter a YAML reader parses (licence, the
data with its two fingerprints, the budget), the sample grid, what the data was, the quality scores or the
commands that compute them, and every Python snippet of its "Use" section run in the folder (the ONNX Runtime and
torch.export ones with flowergan unimportable)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny_run import run_main, tiny_run
from PIL import Image

from flowergan.artifacts.checkpoint import checkpoint_config, read_state, resolve_checkpoint
from flowergan.artifacts.export_folder import load_export
from flowergan.export.card import model_card
from flowergan.generation import generate


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from flowergan_eval import testing

    base = tmp_path_factory.mktemp("card")
    return tiny_run(base / "run", f"data.path={testing.synth_shards(base, 16)}")


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "g"

    class Capsys:  # run_main's capsys, for a module-scoped fixture
        def readouterr(self):
            return "", ""

    code, _, _ = run_main(Capsys(), "export", "--ckpt", run, "--out", out, "--format", "safetensors,pt2,onnx",
                          "--license", "cc-by-4.0")
    assert code == 0
    return out


def card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    head, sep, body = text.removeprefix("---\n").partition("\n---\n")
    assert text.startswith("---\n") and sep
    return yaml.safe_load(head), body


def section(body: str, title: str) -> str:
    return body.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_front_matter_has_the_licence_the_data_and_the_budget(run, folder):
    fm, _ = card(folder)
    assert fm["license"] == "cc-by-4.0" and fm["library_name"] == "flowergan"
    data = fm["flowergan"]["dataset"]
    manifest = json.loads((Path(checkpoint_config(resolve_checkpoint(run)).data.path) / "manifest.json").read_text())
    assert (data["shard_fingerprint"], data["pixel_fingerprint"]) == (manifest["shard_fingerprint"],
                                                                      manifest["pixel_fingerprint"])
    assert data["kind"] == "synthflowers" and "procedural toy set" in data["about"] and "fingerprint" not in data
    assert fm["flowergan"]["budget"] == {"steps": 10, "planned": "10 steps", "batch_size": 8, "images_seen": 80,
                                         "epochs": 5.0}


def test_the_card_shows_a_sample_grid_and_says_what_the_data_was(folder):
    _, body = card(folder)
    assert "](samples.png)" in body
    with Image.open(folder / "samples.png") as grid:
        assert grid.size == (8 * 66 + 2, 8 * 66 + 2)  # 64 images of 64 px, torchvision's 2 px padding
        assert np.asarray(grid).std() > 5  # a picture, not a blank
    data = section(body, "Training data")
    assert "procedural toy set" in data and "Not photographs" in data and "pixel fingerprint" in data
    assert "10 steps of G at batch 8 (80 images seen, 5 passes" in section(body, "Training budget")


def python_blocks(body: str) -> dict[str, str]:
    """The Use section's Python code blocks by their subsection title."""
    blocks = {}
    for part in section(body, "Use").split("\n### ")[1:]:
        title = part.split("\n", 1)[0]
        code = re.findall(r"```python\n(.*?)```", part, re.S)
        if code:
            blocks[title] = code[0]
    return blocks


def test_every_snippet_runs_in_the_folder_and_agrees_with_flowergan(folder, monkeypatch):
    G = load_export(folder)
    blocks = python_blocks(card(folder)[1])
    assert set(blocks) == {"With flowergan", "Without flowergan: ONNX Runtime (`generator.onnx`)",
                           "Without flowergan: torch.export (`generator.pt2`)"}
    monkeypatch.chdir(folder)

    ns: dict = {}
    exec(blocks["With flowergan"], ns)
    assert torch.equal(ns["images"], generate(G, 16, seed=0))

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "flowergan", None)  # `import flowergan` fails: these snippets must not need it
        onnx: dict = {}
        exec(blocks["Without flowergan: ONNX Runtime (`generator.onnx`)"], onnx)
        pt2: dict = {}
        exec(blocks["Without flowergan: torch.export (`generator.pt2`)"], pt2)
    with torch.no_grad():
        want = G(torch.from_numpy(onnx["z"]))
        assert np.abs(onnx["images"] - want.numpy()).max() < 1e-4
        assert (folder / "flower-0.png").is_file()
        want = G(torch.randn(16, G.nz, generator=torch.Generator().manual_seed(0)))
        assert (pt2["images"] - want).abs().max() < 1e-4 and pt2["pixels"].dtype == torch.uint8


def test_quality_scores_when_recorded_else_the_commands_that_compute_them(run):
    ckpt = resolve_checkpoint(run)
    cfg, state = checkpoint_config(ckpt), read_state(ckpt)
    meta = {"weights": "G_ema", "resolution": 64, "nz": 100, "files": {"safetensors": "model.safetensors"}}
    body = model_card(meta, state, cfg).split("\n---\n", 1)[1]
    quality = section(body, "Quality")
    assert "flowergan-eval synth-fd --ckpt . --data" in quality and "flowergan-eval modes --ckpt ." in quality
    assert "--format safetensors,onnx,pt2" in section(body, "Use")  # how to get the graph files it lacks

    scored = {**state, "metrics": {**state["metrics"], "synth_fd1k": 12.5, "modes1k/covered": 40.0}}
    quality = section(model_card(meta, scored, cfg).split("\n---\n", 1)[1], "Quality")
    assert "| synth_fd1k | 12.5 |" in quality and "| modes1k/covered | 40 |" in quality
    assert "N=1000" in quality and "No quality score" not in quality and "--ckpt ." not in quality

    cfg.data.path = str(Path(cfg.data.path).parent / "photos")  # no manifest there: photos of unknown origin
    body = model_card(meta, state, cfg).split("\n---\n", 1)[1]
    assert "flowergan-eval fid --ckpt ." in section(body, "Quality")
    assert "terms of use" in section(body, "Training data") and "toy set" not in body


def test_manifests_written_before_the_fingerprints_had_two_names_still_read():
    from flowergan_eval.real import RealSet

    from flowergan.data.format import fingerprints

    old = {"fingerprint": "abc", "resolution": 64, "num_samples": 1, "num_classes": 1}
    assert fingerprints(old) == {"shard_fingerprint": "abc", "pixel_fingerprint": ""}
    assert RealSet("x", old).cache_id == "abc"  # the reference-statistics caches made from it are still found
    assert RealSet("x", {**old, "pixel_fingerprint": "def"}).cache_id == "def"
