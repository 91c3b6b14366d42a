"""`flowergan-eval` as a user runs it: a checkpoint written by the trainer's code, shards written by the data
CLI's code, random Inception weights (never a download); tables, one JSON object, cached reference statistics,
and one-line errors with exit code 2."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from flowergan_eval import stats as S
from flowergan_eval import testing
from flowergan_eval import weights as W
from flowergan_eval.cli import app
from flowergan_eval.real import iter_real, open_real
from typer.testing import CliRunner

from flowergan.data.format import read_manifest

N = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return {"weights": testing.inception_weights(base, seed=0), "run": testing.checkpoint(base / "run-cli"),
            "data": testing.synth_shards(base, 40, seed=5), "cache": tmp_path_factory.mktemp("cli-cache")}


@pytest.fixture(autouse=True)
def _env(setup, monkeypatch):
    monkeypatch.setenv(W.ENV_CACHE, str(setup["cache"]))
    monkeypatch.setenv(W.ENV_WEIGHTS, str(setup["weights"]))
    monkeypatch.setenv(W.ENV_URL, "http://127.0.0.1:9/never-downloaded.pth")


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script if there is one (as a user runs it), else the same entry point."""
    exe = Path(sys.executable).parent / "flowergan-eval"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from flowergan_eval.cli import main; main()"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300, env=env or dict(os.environ),
                          cwd=cwd)


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_fid_json_is_one_object_with_its_provenance(setup):
    proc = _cli("fid", "--ckpt", str(setup["run"]), "--data", str(setup["data"]), "--n", str(N), "--ref-n", str(N),
                "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the whole of stdout is one JSON object: progress bars went to stderr
    assert "generated features" in proc.stderr
    fid = result["metrics"][f"fid{N}"]
    assert math.isfinite(fid) and fid > 0
    prov = result["provenance"]
    manifest = read_manifest(setup["data"])
    assert prov["n"] == N and prov["generator"] == "G_ema" and prov["step"] == 100
    assert prov["checkpoint"].endswith("checkpoints/step-00000100")
    # The decoded pixels' fingerprint: what reference caches key on, equal across zlib builds.
    assert prov["reference"]["pixel_fingerprint"] == manifest["pixel_fingerprint"] and prov["reference"]["n"] == N
    assert prov["reference"]["shard_fingerprint"] == manifest["shard_fingerprint"] != manifest["pixel_fingerprint"]
    assert "custom weights" in prov["extractor"] and prov["resize"] == "tf1-bilinear 64->299"
    stats_files = list((setup["cache"] / "stats").iterdir())
    assert [p.suffix for p in stats_files] == [".npz"]  # written once, atomically: no temporary left over


def test_an_export_folder_is_enough_wherever_only_G_is_needed(setup, tmp_path):
    """`--ckpt EXPORT_DIR`: the same G_ema, so the same FID as its checkpoint; what needs D says so in one line."""
    from flowergan.export import export

    folder = export(setup["run"], tmp_path / "exported")
    common = ["--data", str(setup["data"]), "--n", str(N), "--ref-n", str(N), "--json", "--no-progress"]
    from_run = _cli("fid", "--ckpt", str(setup["run"]), *common)
    from_export = _cli("fid", "--ckpt", str(folder), *common)
    assert from_run.returncode == 0 and from_export.returncode == 0, from_export.stderr
    a, b = json.loads(from_run.stdout), json.loads(from_export.stdout)
    assert a["metrics"] == b["metrics"] and math.isfinite(b["metrics"][f"fid{N}"])
    assert b["provenance"]["checkpoint"] == str(folder) and b["provenance"]["generator"] == "G_ema"
    proc = _cli("report", "--ckpt", str(folder), "--data", str(setup["data"]), "--n", str(N), "--out",
                str(tmp_path / "r.html"), "--no-progress")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {folder} is an export folder, which holds G only; the report"), proc.stderr
    assert "needs D: pass a checkpoint or run dir instead" in proc.stderr


def test_kid_table_states_n_reference_extractor_and_resize(setup):
    out = _invoke("kid", "--ckpt", str(setup["run"]), "--data", str(setup["data"]), "--n", str(N), "--ref-n",
                  str(N), "--no-progress").output
    for text in (f"kid{N}", f"kid{N}/std", "reference", f"{N} real images", "cached stats", "extractor",
                 "tf1-bilinear 64->299", "G_ema", "lower is better"):
        assert text in out, text
    raw = _invoke("kid", "--ckpt", str(setup["run"]), "--data", str(setup["data"]), "--n", str(N), "--ref-n", str(N),
                  "--no-progress", "--raw", "--json").output
    assert json.loads(raw)["provenance"]["generator"] == "G"


def test_is_and_prdc_and_diversity(setup):
    common = ["--ckpt", str(setup["run"]), "--data", str(setup["data"]), "--n", "10", "--ref-n", str(N),
              "--no-progress", "--json"]
    score = json.loads(_invoke("is", *common).output)
    assert score["metrics"]["is10"] >= 1.0 and "reference" not in score["provenance"]  # IS needs no real images
    pr = json.loads(_invoke("prdc", *common).output)["metrics"]
    assert set(pr) == {f"prdc10/{k}" for k in ("precision", "recall", "density", "coverage")}
    assert all(0.0 <= pr[f"prdc10/{k}"] <= 1.0 for k in ("precision", "recall", "coverage"))
    div = json.loads(_invoke("diversity", *common, "--pairs", "20").output)
    m = div["metrics"]
    # An untrained G draws near-identical grey pictures: MS-SSIM far above the real images', all near duplicates.
    assert m["ms_ssim10/generated"] > m["ms_ssim10/real"] + 0.3
    assert m["near_dup10/rate"] == 1.0
    assert div["details"]["closest"] and {"generated", "train", "distance"} <= set(div["details"]["closest"][0])


def test_stats_are_cached_by_fingerprint_and_count(setup):
    args = ["stats", "--data", str(setup["data"]), "--ref-n", "6", "--no-progress", "--json"]
    first = json.loads(_invoke(*args).output)
    path = Path(first["path"])
    assert path.is_file() and "written to" in first["messages"][0] and first["metrics"]["real_images"] == 6
    mtime = path.stat().st_mtime_ns
    S._MEMORY.clear()  # as a new process would: only the file remains
    second = json.loads(_invoke(*args).output)
    assert second["path"] == first["path"] and "reused from" in second["messages"][0]
    assert path.stat().st_mtime_ns == mtime
    other = json.loads(_invoke("stats", "--data", str(setup["data"]), "--ref-n", "5", "--no-progress",
                               "--json").output)
    assert other["path"] != first["path"]


def test_cache_key_depends_on_every_input():
    base = ("fp", 64, "sha", "tf1-bilinear", 100)
    keys = {S.cache_key(*base)}
    for i, changed in enumerate(("fp2", 128, "sha2", "other", 101)):
        args = list(base)
        args[i] = changed
        keys.add(S.cache_key(*args))
    assert len(keys) == 6


def test_user_errors_are_one_line_and_exit_2(setup, tmp_path):
    small = testing.synth_shards(tmp_path, 8, seed=1, size=32)
    cases = [
        (["fid", "--ckpt", str(tmp_path / "nope"), "--data", str(setup["data"])], "does not exist"),
        (["fid", "--ckpt", str(setup["run"]), "--data", str(small), "--n", "4"], "holds 32 px images"),
        (["fid", "--ckpt", str(setup["run"]), "--n", "4"], "pass --data"),
        (["kid", "--ckpt", str(setup["run"]), "--data", str(tmp_path / "no-data")], "manifest.json"),
        (["is", "--ckpt", str(setup["run"]), "--n", "4", "--inception-weights", str(setup["weights"])], "--n"),
    ]
    for args, expected in cases:
        # Away from the clone: without --data the run's recorded data/synth64 is used where it exists (after make demo).
        proc = _cli(*args, "--no-progress", cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, proc.stderr)


def test_a_corrupt_image_is_reported_by_shard_and_key_and_skipped(setup, tmp_path, capsys):
    data = tmp_path / "damaged"
    shutil.copytree(setup["data"], data)
    shard = sorted(data.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad_key = members[0][0].name.split(".")[0]
    with tarfile.open(shard, "w") as tar:
        for m, payload in members:
            if m.name.endswith(".png") and m.name.startswith(bad_key):
                payload = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10  # a PNG header and nothing decodable
                m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    real = open_real(str(data))
    images = [x for x, _ in iter_real(real, batch=16)]
    assert sum(len(x) for x in images) == real.num_samples - 1  # the good ones are all kept
    assert len(real.skipped) == 1 and real.skipped[0].startswith(f"{shard.name}:{bad_key}")
    assert f"{shard.name}:{bad_key}" in capsys.readouterr().err
