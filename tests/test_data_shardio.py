"""Shard I/O on real tar shards: every way of opening a URL reads the same samples; failing commands are errors."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_support import RangeServer, png_bytes

from flowergan.config import DataConfig
from flowergan.data import build_stream, read_manifest
from flowergan.data.format import verify
from flowergan.data.ingest.synth import write_synthflowers
from flowergan.data.loader.decode import decode_batch
from flowergan.data.loader.shard_reader import ShardError, iter_samples
from flowergan.data.png import encode_png
from flowergan.errors import UserError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 SynthFlowers at 16 px in 4 shards of 10."""
    out = tmp_path_factory.mktemp("synth16")
    write_synthflowers(out, n=40, size=16, seed=0, shard_size=10, progress=False)
    return out


@pytest.fixture(scope="module")
def first(shards) -> Path:
    return shards / read_manifest(shards)["shards"][0]["name"]


def keys(url: str) -> list[tuple[str, bytes, bytes]]:
    return [(s["__key__"], s["png"], s["cls"]) for s in iter_samples(url)]


def member_boundary(shard: Path, k: int) -> int:
    """The byte offset where sample k's first header starts (a cut there leaves a well-formed, shorter tar)."""
    with tarfile.open(shard) as tf:
        return tf.getmembers()[3 * k].offset


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_local_file_url_and_pipe_read_the_same_samples_and_hash_every_byte(first):
    local = keys(str(first))
    assert len(local) == 10
    assert keys(f"file://{first}") == local
    assert keys(f"pipe:cat {first}") == local
    digest = hashlib.sha256()
    assert sum(1 for _ in iter_samples(f"pipe:cat {first}", digest=digest)) == 10
    assert digest.hexdigest() == hashlib.sha256(first.read_bytes()).hexdigest()  # the tar's padding too


@pytest.mark.parametrize("cut", ["none", "mid-member", "member-boundary"])
def test_a_failing_pipe_command_is_an_error_naming_its_status(first, cut):
    send = {"none": f"cat {first}", "mid-member": f"head -c 3000 {first}",
            "member-boundary": f"head -c {member_boundary(first, 4)} {first}"}[cut]
    with pytest.raises(ShardError) as e:
        list(iter_samples(f"pipe:{send}; exit 3"))
    assert one_line(e).startswith(f"pipe:{send}; exit 3: the command exited with status 3")


def test_without_the_status_a_cut_archive_is_damaged_or_short(first):
    with pytest.raises(ShardError, match="damaged shard"):
        list(iter_samples(f"pipe:head -c 3000 {first}"))
    # Cut between samples, a tar reads as a shorter one: the readers compare with the manifest (next test).
    assert len(list(iter_samples(f"pipe:head -c {member_boundary(first, 4)} {first}"))) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_the_training_stream_stops_on_a_failing_command(shards, workers):
    # The manifest is read fine; every shard's command sends the whole shard and then fails.
    path = f"pipe:cat {shards}/{{file}}; test {{file}} = manifest.json"
    stream = build_stream(DataConfig(path=path, workers=workers, hflip=0.0), batch_size=5, resolution=16)
    with pytest.raises(UserError) as e:
        next(iter(stream))
    assert "exited with status 1" in one_line(e)


def test_the_training_stream_names_a_shard_cut_short_between_samples(shards, first, tmp_path):
    short = tmp_path / "short"
    shutil.copytree(shards, short)
    (short / first.name).write_bytes(first.read_bytes()[:member_boundary(first, 4)])
    stream = build_stream(DataConfig(path=str(short), workers=0, hflip=0.0, shuffle_buffer=0), batch_size=40,
                          resolution=16)
    with pytest.raises(UserError, match=f"{first.name}: holds 4 samples, the manifest says 10"):
        next(iter(stream))


def test_stopping_early_kills_the_command(first):
    samples = iter_samples(f"pipe:cat {first}; exec sleep 60")
    next(samples)
    t0 = time.monotonic()
    samples.close()  # without the kill, closing waits for the command: 60 s
    assert time.monotonic() - t0 < 10


def test_a_command_that_never_stops_after_the_archive_is_cut_off(first):
    with pytest.raises(ShardError, match="more than 16 MB after the end of the tar archive"):
        list(iter_samples(f"pipe:cat {first} /dev/zero"))


def test_fsspec_urls_go_through_the_registered_entry(first):
    import fsspec

    fsspec.filesystem("memory").pipe("/shardio/a.tar", first.read_bytes())
    assert keys("memory://shardio/a.tar") == keys(str(first))


@pytest.mark.parametrize("scheme,plugin", [("gs", "gcsfs"), ("s3", "s3fs")])
def test_object_stores_use_fsspec_and_name_the_missing_plugin(scheme, plugin):
    if importlib.util.find_spec(plugin) is not None:
        pytest.skip(f"{plugin} is installed (this test checks the message without it)")
    # gs:// would otherwise go to webdataset's `gsutil cat`, which images rarely have.
    with pytest.raises(ShardError) as e:
        list(iter_samples(f"{scheme}://bucket/a.tar"))
    assert f"needs {plugin} (pip install {plugin}" in one_line(e)


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http(s) with curl")
def test_http_through_curl_and_a_missing_url_names_curl_and_its_status(shards, first):
    files = {p.name: p.read_bytes() for p in shards.iterdir()}
    with RangeServer(files) as srv:
        assert keys(f"{srv.url}/{first.name}") == keys(str(first))
        assert verify(srv.url)["samples"] == 40  # manifest and shards over http, hashed as they stream
        with pytest.raises(ShardError) as e:
            list(iter_samples(f"{srv.url}/missing.tar"))
    assert "`curl" in one_line(e) and "exited with status 22" in one_line(e)  # curl -f: HTTP error


def test_verify_reads_through_a_pipe_and_a_failing_manifest_command_is_one_line(shards):
    assert verify(f"pipe:cat {shards}/{{file}}")["samples"] == 40
    with pytest.raises(UserError) as e:
        read_manifest(f"pipe:cat {shards}/{{file}}; exit 4")
    assert "cannot read" in one_line(e) and "exited with status 4" in one_line(e)


def test_without_webdataset_reading_is_one_line_saying_so(first, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset.gopen", None)  # what an environment without it sees
    with pytest.raises(ShardError) as e:
        list(iter_samples(str(first)))
    assert "needs the webdataset package" in one_line(e)


def test_decode_batch_decodes_the_good_and_names_what_is_wrong_with_the_rest():
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    samples = [
        {"__key__": "fast", "png": encode_png(good[0]), "cls": b"3"},
        {"__key__": "pillow", "png": png_bytes(Image.fromarray(good[1])), "cls": b"1"},  # not our PNG: slow path
        {"__key__": "big", "png": encode_png(np.zeros((9, 9, 3), np.uint8)), "cls": b"0"},
        {"__key__": "none", "cls": b"0"},
        {"__key__": "junk", "png": b"\x89PNG\r\n\x1a\nnot really", "cls": b"0"},
        {"__key__": "label", "png": encode_png(good[0]), "cls": b"x"},
    ]
    x, labels, bad = decode_batch(samples, "png", 8)
    assert (x[0] == good[0]).all() and (x[1] == good[1]).all() and labels[:2].tolist() == [3, 1]
    reasons = dict(bad)
    assert sorted(reasons) == [2, 3, 4, 5]
    assert reasons[2] == "is 9x9, the manifest says 8x8" and reasons[3] == "has no .png image"
    assert reasons[4].startswith("does not decode") and reasons[5].startswith("has a bad .cls label")


def test_jpeg_shards_decode_through_pillow(tmp_path):
    """A set made with --format jpg streams too (no fast path: every sample goes through Pillow)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG", quality=95)
    x, labels, bad = decode_batch([{"__key__": "a", "jpg": buf.getvalue(), "cls": b"2"}], "jpg", 8)
    assert not bad and labels.tolist() == [2] and abs(int(x[0, 4, 4, 0]) - 200) < 8
