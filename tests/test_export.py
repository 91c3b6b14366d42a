"""`flowergan export`: G only, nothing pickled; the export's G is bit-identical to the checkpoint's G_ema (or G
with --raw), is rebuilt from the whole [model] section, its .pt2 and .onnx agree with it to 1e-5, the model card's
front matter parses as the Hub reads it, and bad input is one line, exit 2, with nothing half-written."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny_run import run_main, tiny_run
from safetensors.torch import load_file

from flowergan.artifacts import open_generator
from flowergan.artifacts.checkpoint import checkpoint_config, read_state, resolve_checkpoint
from flowergan.artifacts.export_folder import is_export, load_export
from flowergan.config import ModelConfig
from flowergan.export import export
from flowergan.export.card import front_matter, model_card
from flowergan.generation import generate


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from flowergan_eval import testing

    base = tmp_path_factory.mktemp("export")
    data = testing.synth_shards(base, 16)  # a manifest the model card can take the fingerprint from
    return tiny_run(base / "run", f"data.path={data}")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    return export(run, tmp_path_factory.mktemp("out") / "flowers-g", formats="safetensors,pt2,onnx")


def front(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    head, sep, _ = text.removeprefix("---\n").partition("\n---\n")
    assert text.startswith("---\n") and sep
    return yaml.safe_load(head)


def test_export_holds_g_only_and_nothing_that_needs_unpickling(run, exported):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "generator.onnx", "generator.pt2", "model.safetensors", "samples.png"]
    G_ema = open_generator(run)
    tensors = load_file(str(exported / "model.safetensors"))
    assert set(tensors) == set(G_ema.state_dict())  # plain keys: no G./G_ema./D. prefix, no optimizer state
    assert is_export(exported) and not is_export(resolve_checkpoint(run))
    with zipfile.ZipFile(exported / "generator.pt2") as pt2:  # torch's archive: JSON, raw weights, tensors
        pickled = [n for n in pt2.namelist() if n.endswith(".pt")]
        for name in pickled:
            torch.load(io.BytesIO(pt2.read(name)), weights_only=True)
    assert len(pickled) <= 1


def test_export_g_is_bit_identical_to_the_checkpoints_g_ema(run, exported, tmp_path):
    G_ema, G_exp = open_generator(run), open_generator(exported)
    for k, v in G_ema.state_dict().items():
        assert torch.equal(v, G_exp.state_dict()[k]), k
    assert torch.equal(generate(G_exp, 20, seed=5), generate(G_ema, 20, seed=5))
    raw = export(run, tmp_path / "raw", ema=False)
    assert json.loads((raw / "config.json").read_text())["weights"] == "G"
    assert torch.equal(generate(open_generator(raw), 4), generate(open_generator(run, ema=False), 4))
    assert not torch.equal(generate(open_generator(raw), 4), generate(G_ema, 4))  # G and G_ema differ
    assert torch.equal(generate(open_generator(raw, ema=False), 4), generate(open_generator(raw), 4))
    from flowergan.errors import UserError

    with pytest.raises(UserError, match="export of G_ema only"):
        open_generator(exported, ema=False)  # sample --raw on a G_ema export: it cannot give what was asked


def test_pt2_and_onnx_agree_with_the_safetensors_g(exported):
    import onnxruntime

    G = load_export(exported)
    program = torch.export.load(str(exported / "generator.pt2")).module()
    session = onnxruntime.InferenceSession(str(exported / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z"] and session.get_outputs()[0].name == "images"
    for batch in (1, 3, 17):  # a dynamic batch dimension
        z = torch.randn(batch, G.nz, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = G(z)
            got_pt2 = program(z)
        (got_onnx,) = session.run(None, {"z": z.numpy()})
        assert want.shape == (batch, 3, 64, 64)
        torch.testing.assert_close(got_pt2, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_onnx, want.numpy(), rtol=0, atol=1e-5)


def test_config_json_holds_the_whole_model_section_and_the_conventions(run, exported):
    meta = json.loads((exported / "config.json").read_text())
    saved = read_state(resolve_checkpoint(run))["config"]["model"]
    assert meta["model"] == saved
    assert set(meta["model"]) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert meta["nz"] == saved["nz"] and meta["resolution"] == 64 and meta["weights"] == "G_ema"
    assert meta["output"]["range"] == [-1.0, 1.0] and meta["output"]["channel_order"] == "RGB"
    assert "round((x + 1) * 127.5)" in meta["output"]["to_uint8"]
    assert meta["files"] == {"safetensors": "model.safetensors", "pt2": "generator.pt2", "onnx": "generator.onnx"}
    assert meta["source"]["step"] == 10 and meta["source"]["images_seen"] == 80


def test_g_is_rebuilt_from_the_section_not_from_defaults(tmp_path):
    """Non-default architecture fields travel through config.json (a hand-picked list of keys would lose them)."""
    run = tiny_run(tmp_path / "run", "model.kernel=5", "model.nz=12", "model.ngf=4", steps=2)
    out = export(run, tmp_path / "g")
    G = load_export(out)
    assert G.nz == 12 and G.main[3].kernel_size == (5, 5)
    assert torch.equal(generate(G, 3), generate(open_generator(run), 3))


def test_model_card_front_matter_is_what_the_hub_reads(run, exported):
    fm = front(exported)
    assert fm["library_name"] == "flowergan" and fm["pipeline_tag"] == "unconditional-image-generation"
    assert {"dcgan", "gan", "safetensors"} <= set(fm["tags"])
    info = fm["flowergan"]
    manifest = json.loads((Path(checkpoint_config(resolve_checkpoint(run)).data.path) / "manifest.json").read_text())
    assert info["dataset"]["shard_fingerprint"] == manifest["shard_fingerprint"] and info["dataset"]["images"] == 16
    assert info["dataset"]["pixel_fingerprint"] == manifest["pixel_fingerprint"] != manifest["shard_fingerprint"]
    assert info["training_steps"] == 10 and info["images_seen"] == 80
    state = read_state(resolve_checkpoint(run))
    assert {m["name"]: m["value"] for m in info["metrics"]} == pytest.approx(state["metrics"])
    assert all(m["source"].startswith("training loop") for m in info["metrics"])


def test_scores_carry_n_extractor_and_reference(run):
    ckpt = resolve_checkpoint(run)
    cfg = checkpoint_config(ckpt)
    state = {**read_state(ckpt), "metrics": {"kid1k": 0.0123, "kid1k/std": 0.002, "fid500": 87.5, "Loss/D": 1.0},
             "best": 0.011}
    meta = json.loads(json.dumps({"weights": "G_ema", "resolution": 64, "nz": 100, "files": {}}))
    fm = yaml.safe_load(model_card(meta, state, cfg).split("---\n")[1])
    assert fm == json.loads(json.dumps(front_matter(meta, state, cfg)))
    by_name = {m["name"]: m for m in fm["flowergan"]["metrics"]}
    assert by_name["kid1k"]["n_generated"] == 1000 and by_name["fid500"]["n_generated"] == 500
    assert by_name["kid1k/std"]["statistic"].startswith("standard deviation")
    assert "Inception" in by_name["kid1k"]["extractor"] and by_name["kid1k"]["reference"] == cfg.data.path
    assert by_name["kid1k"]["weights"] == "G_ema" and "n_generated" not in by_name["Loss/D"]
    assert fm["flowergan"]["best_score"]["value"] == 0.011 and fm["flowergan"]["best_score"]["metric"] == "kid"
    (result,) = fm["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "kid", "name": "kid1k", "value": 0.0123},
                                 {"type": "fid", "name": "fid500", "value": 87.5}]


def test_offline_scores_name_their_own_extractor(run):
    """synth_fd and the mode metrics (no Inception involved) are scores with their own extractor on the card."""
    ckpt = resolve_checkpoint(run)
    cfg = checkpoint_config(ckpt)
    state = {**read_state(ckpt), "metrics": {"synth_fd1k": 3.5, "modes1k/covered": 40.0, "modes_kl1k": 0.2}}
    meta = {"weights": "G_ema", "resolution": 64, "nz": 100, "files": {}}
    by_name = {m["name"]: m for m in front_matter(meta, state, cfg)["flowergan"]["metrics"]}
    assert "SynthNet" in by_name["synth_fd1k"]["extractor"] and by_name["synth_fd1k"]["n_generated"] == 1000
    assert by_name["modes1k/covered"]["statistic"] == "modes covered"
    assert "oracle" in by_name["modes_kl1k"]["extractor"] and "Inception" not in str(by_name["modes_kl1k"])


def test_cli_export_and_its_errors_are_one_line_with_nothing_left(run, tmp_path, capsys):
    code, out, err = run_main(capsys, "export", "--ckpt", run, "--out", tmp_path / "g")
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'g'}: README.md, config.json, model.safetensors, samples.png"
    cases = {
        "unknown format": (["--ckpt", run, "--out", tmp_path / "x", "--format", "safetensors,tflite"],
                           "error: --format: 'tflite' not allowed; choose from safetensors, pt2, onnx"),
        "missing checkpoint": (["--ckpt", tmp_path / "nope", "--out", tmp_path / "x"],
                               f"error: checkpoint {tmp_path / 'nope'} does not exist"),
        "unwritable out": (["--ckpt", run, "--out", tmp_path / "g" / "config.json" / "x"],
                           f"error: --out {tmp_path / 'g' / 'config.json' / 'x'}: cannot write there"),
        "existing out": (["--ckpt", run, "--out", tmp_path / "g"], "already exists; choose another path or pass"),
    }
    for name, (args, message) in cases.items():
        code, _, err = run_main(capsys, "export", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                  "samples.png"]


def test_a_failing_export_leaves_nothing_behind(run, tmp_path, monkeypatch):
    from flowergan.export import graphs

    def broken(G, path):
        path.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(graphs, "write_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export(run, tmp_path / "g", formats="onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_broken_export_folder_is_one_line(exported, tmp_path):
    from flowergan.errors import UserError

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bad / f).write_bytes((exported / f).read_bytes())
    meta = json.loads((bad / "config.json").read_text())
    meta["model"]["ngf"] = 16
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="model.safetensors: does not fit the model in config.json"):
        open_generator(bad)
    meta["model"]["kernel"] = 3
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"config.json: not a flowergan export config .*model.kernel"):
        open_generator(bad)
