"""Checkpoints that know when they are damaged: every file's sha256 is recorded and checked on load; resume skips a
damaged newest checkpoint with one line and continues from the newest intact one, bit-exactly as if the damaged one
had never been written; checkpoints from before the record still load and resume bit-exactly; `flowergan verify`
checks a run's checkpoints and export folders. (Two ranks under torchrun: tests/test_torchrun.py.)"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _core import TensorStream, tiny_config
from _tiny_run import run_main, tiny_run
from safetensors.torch import load_file, save_file

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts import open_generator
from flowergan.errors import UserError
from flowergan.train.loop import train

STEPS = ("train.steps=20", "train.checkpoint_every=7")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    """64 bytes of 0xFF inside the data (for safetensors: past its JSON header, in a tensor), size unchanged."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0] + 256 if path.suffix == ".safetensors" else len(data) // 2
    data[start:start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _remove(path: Path) -> None:
    path.unlink()


def _extra(path: Path) -> None:
    (path.parent / "notes.txt").write_text("left here by hand")


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # kind: (file, how, what `damage` says)
    "truncated weights": ("models.safetensors", _truncate, "models.safetensors does not match its sha256"),
    "bit-flipped weights": ("models.safetensors", _flip, "models.safetensors does not match its sha256"),
    "bit-flipped optimizer": ("optim.pt", _flip, "optim.pt does not match its sha256"),
    "altered state": ("state.json", lambda p: p.write_text(p.read_text().replace('"step": 14', '"step": 41')),
                      "state.json does not match its sha256"),
    "missing weights": ("models.safetensors", _remove, "models.safetensors is missing"),
    "missing optimizer": ("optim.pt", _remove, "optim.pt is missing"),
    "missing state": ("state.json", _remove, "state.json is missing"),
    "missing record": ("SHA256SUMS", _remove, "SHA256SUMS is missing"),
    "extra file": ("state.json", _extra, "unexpected file notes.txt"),
}


def _damage(ckpt: Path, kind: str) -> str:
    name, how, says = DAMAGE[kind]
    how(ckpt / name)
    return says


def _weights_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a / "models.safetensors")), load_file(str(b / "models.safetensors"))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """20 steps without interruption (checkpoints 7, 14, 20)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(run, *STEPS), stream=TensorStream())
    return run


@pytest.fixture(scope="module")
def ckpt14(tmp_path_factory) -> Path:
    """A pristine step-14 checkpoint (with step 7 beside it) to copy and damage."""
    run = tmp_path_factory.mktemp("first-half") / "run"
    train(tiny_config(run, "train.steps=14", "train.checkpoint_every=7"), stream=TensorStream())
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_a_fresh_checkpoint_records_the_sha256_of_its_files(ckpt14: Path) -> None:
    ckpt = ckpt14 / "checkpoints" / "step-00000014"
    lines = (ckpt / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["models.safetensors", "optim.pt", "state.json"]
    assert all(ckpt_io.sha256_of(ckpt / name) == digest for digest, name in (line.split("  ") for line in lines))
    assert json.loads((ckpt / "state.json").read_text())["checksums"] == "SHA256SUMS"
    assert ckpt_io.damage(ckpt) is None


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_found_and_loading_refuses_it(ckpt14: Path, tmp_path: Path, kind: str) -> None:
    run = _copy(ckpt14, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-00000014"
    says = _damage(ckpt, kind)
    assert says in (ckpt_io.damage(ckpt) or "")
    assert ckpt_io.damage(run / "checkpoints" / "step-00000007") is None
    if (ckpt / "state.json").is_file() and (ckpt / "models.safetensors").is_file():
        with pytest.raises(UserError, match=f"checkpoint {ckpt} is damaged: {says}"):
            open_generator(ckpt)


@pytest.mark.parametrize("kind", ["bit-flipped weights", "missing state",
                                  pytest.param("truncated weights", marks=pytest.mark.slow),
                                  pytest.param("extra file", marks=pytest.mark.slow)])
def test_resume_skips_a_damaged_newest_checkpoint_bit_exactly(straight: Path, ckpt14: Path, tmp_path: Path,
                                                              capsys, kind: str) -> None:
    """14 steps, the newest checkpoint damaged, --resume to 20: one line names the skipped one and why, and the run
    continues from step 7 to the very weights of 20 uninterrupted steps."""
    run = _copy(ckpt14, tmp_path / "run")
    says = _damage(run / "checkpoints" / "step-00000014", kind)
    capsys.readouterr()
    train(tiny_config(run, *STEPS), resume=True, stream=TensorStream())
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "damaged" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("warning: skipped damaged checkpoint step-00000014 (") and says in lines[0]
    assert lines[0].endswith("; resuming from step-00000007"), lines[0]
    for step in ("00000014", "00000020"):  # step 14 written again, whole; step 20 as if nothing had happened
        assert _weights_equal(straight / "checkpoints" / f"step-{step}", run / "checkpoints" / f"step-{step}")
        assert ckpt_io.damage(run / "checkpoints" / f"step-{step}") is None


def test_every_checkpoint_damaged_is_one_line(ckpt14: Path, tmp_path: Path) -> None:
    run = _copy(ckpt14, tmp_path / "run")
    for step in ("00000007", "00000014"):
        _flip(run / "checkpoints" / f"step-{step}" / "models.safetensors")
    with pytest.raises(UserError, match=r"every checkpoint is damaged \(skipped damaged checkpoints step-00000014 "
                                        r"\(models.safetensors .*\), step-00000007 \("):
        train(tiny_config(run, *STEPS), resume=True, stream=TensorStream())


def _old_layout(ckpt: Path) -> None:
    """Rewrite a checkpoint as flowergan wrote them before the sha256 record, with the libraries alone: the same
    three files (safetensors, tensors-only torch.save, JSON), no SHA256SUMS, no "checksums" in state.json."""
    tensors = load_file(str(ckpt / "models.safetensors"))
    optim = torch.load(ckpt / "optim.pt", map_location="cpu", weights_only=True)
    state = json.loads((ckpt / "state.json").read_text())
    del state["checksums"]
    shutil.rmtree(ckpt)
    ckpt.mkdir()
    save_file(tensors, str(ckpt / "models.safetensors"))
    torch.save(optim, ckpt / "optim.pt")
    (ckpt / "state.json").write_text(json.dumps(state, indent=1))


def test_a_checkpoint_from_before_the_record_resumes_bit_exactly(straight: Path, ckpt14: Path, tmp_path: Path,
                                                                 capsys) -> None:
    run = _copy(ckpt14, tmp_path / "run")
    old = run / "checkpoints" / "step-00000014"
    _old_layout(old)
    assert sorted(p.name for p in old.iterdir()) == ["models.safetensors", "optim.pt", "state.json"]
    assert not ckpt_io.has_checksums(old) and ckpt_io.damage(old) is None
    capsys.readouterr()
    train(tiny_config(run, *STEPS), resume=True, stream=TensorStream())
    out = capsys.readouterr().out
    assert "damaged" not in out and "note:" not in out, out
    assert _weights_equal(straight / "checkpoints" / "step-00000020", run / "checkpoints" / "step-00000020")
    # ... and a lost file of an old checkpoint is still found (its files are known, their digests are not).
    newest = run / "checkpoints" / "step-00000020"
    _old_layout(newest)
    (newest / "optim.pt").unlink()
    assert ckpt_io.damage(newest) == "optim.pt is missing"


def test_flowergan_verify_checks_checkpoints_and_export_folders(tmp_path: Path, capsys) -> None:
    from flowergan.export import export

    run = tiny_run(tmp_path / "run", steps=4)
    export(run, run / "export")
    code, out, err = run_main(capsys, "verify", run)
    assert code == 0, err
    assert out.splitlines() == [f"ok: {run / 'checkpoints' / 'step-00000004'}", f"ok: {run / 'export'}"]

    _flip(run / "export" / "model.safetensors")
    with pytest.raises(UserError, match="export folder .* is damaged: model.safetensors does not match its sha256"):
        open_generator(run / "export")
    _damage(run / "checkpoints" / "step-00000004", "missing optimizer")
    code, out, err = run_main(capsys, "verify", run)
    assert code == 2, out
    assert out.splitlines() == [f"DAMAGED: {run / 'checkpoints' / 'step-00000004'}: optim.pt is missing",
                                f"DAMAGED: {run / 'export'}: model.safetensors does not match its sha256 (truncated "
                                "or altered)"]
    assert err.strip() == "error: 2 of 2 damaged: step-00000004, export"
    code, out, _ = run_main(capsys, "verify", run / "checkpoints" / "step-00000004")
    assert code == 2 and out.startswith("DAMAGED:")
