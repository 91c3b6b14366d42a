"""User errors of both CLIs, through their console entry points as a user meets them: one line on stderr in the
form `error: --opt VALUE: what is wrong`, exit code 2, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny_run import run_main
from flowergan_eval.testing import checkpoint


def eval_main(capsys, *args: object) -> tuple[int, str, str]:
    """`flowergan-eval ARGS` in this process (its console entry point, error handling included)."""
    return run_main(capsys, *args, prog="flowergan-eval")


def one_line_error(code: int, err: str, starts: str) -> str:
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)  # no blank line, no traceback, no progress bar
    assert err.startswith(f"error: {starts}"), err
    assert "Value error" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args, starts, says", [
    (["train", "--device", "gpu", "--dry-run"], "--device gpu: ", "choose one of: auto, cpu, cuda"),
    (["train", "--workers", "0", "--dry-run"], "--workers 0: ", ">= 1"),
    (["train", "--set", "train.ema=off", "--dry-run"], "--set train.ema=off: ", "true, false, yes, no, 1, 0"),
    (["sample", "--ckpt", "nowhere", "--n", "0"], "--n 0: ", "must be >= 1"),
    (["sample", "--ckpt", "nowhere", "--format", "jpg"], "--format jpg: ", "not one of 'grid', 'png', 'npz'"),
    (["export", "--ckpt", "nowhere", "--out", "x", "--format", "jpg"], "--format: ", "safetensors, pt2, onnx"),
])
def test_flowergan_usage_errors(capsys, args, starts, says):
    assert says in one_line_error(*run_main(capsys, *args)[::2], starts)


def test_eval_n_error_has_the_same_form_and_no_blank_line_before_it(capsys, tmp_path):
    run = checkpoint(tmp_path / "run")
    for command in ("fid", "modes", "diversity"):
        code, _, err = eval_main(capsys, command, "--ckpt", run, "--data", tmp_path / "none", "--n", 1, "--device",
                                 "cpu")
        assert "must be >= 2" in one_line_error(code, err, "--n 1: ")


def test_resume_of_a_finished_run_says_where_it_is(capsys, tmp_path, shards):
    args = ["train", "--config", Path(__file__).parents[1] / "jobs" / "smoke.toml", "--run-dir", tmp_path / "run",
            "--set", f"data.path={shards}", "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.steps=2",
            "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2", "--set", "log.sample_every=2",
            "--set", "train.r1_gamma=0", "--set", "log.progress=false", "--set", "log.n_samples=4"]
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    err = one_line_error(*run_main(capsys, *args, "--resume")[::2], "--resume: ")
    assert "already at step 2 of 2" in err and "train.steps" in err


def test_a_failed_data_shard_leaves_no_folder_it_made(capsys, tmp_path):
    empty = tmp_path / "no-images"  # found empty after --out is made (Staging.open): the cleanup is what is tested
    empty.mkdir()
    args = ["data", "shard", empty]
    out = tmp_path / "new" / "deeper" / "out"
    code, _, err = run_main(capsys, *args, "--out", out)
    one_line_error(code, err, "")
    assert not (tmp_path / "new").exists()
    # A folder that was there before stays, with everything in it (--force: write into a non-empty folder).
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    code, _, err = run_main(capsys, *args, "--out", kept, "--force")
    one_line_error(code, err, "")
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
