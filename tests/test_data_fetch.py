"""`flowergan data fetch` against a loopback HTTP server: checksums, resumed downloads, safe unpacking, no debris."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat
from test_data_support import RangeServer, jpeg_bytes, photo, run_cli

from flowergan.data.format import verify
from flowergan.data.ingest.fetch import DATASETS, DatasetSpec, RemoteFile, download, fetch
from flowergan.data.ingest.images import ImageOptions
from flowergan.data.ingest.sharder import ShardOptions
from flowergan.errors import UserError

OPTS = ShardOptions(image=ImageOptions(size=16), workers=1)


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _photos_tgz() -> bytes:
    """A small stand-in for flower_photos.tgz: flower_photos/<class>/*.jpg + LICENSE.txt (and one evil member)."""
    files = {f"flower_photos/{c}/{i}.jpg": jpeg_bytes(photo(10 * k + i, 40, 30))
             for k, c in enumerate(("daisy", "roses", "tulips")) for i in range(4)}
    files["flower_photos/LICENSE.txt"] = b"CC-BY"
    files["../../outside.jpg"] = jpeg_bytes(photo(99))
    return _tgz(files)


def _spec(base: str, files: dict[str, bytes], layout: str = "folders", extract=("tgz",)) -> DatasetSpec:
    return DatasetSpec("tiny", layout, tuple(
        RemoteFile(f"{base}/{name}", hashlib.sha256(data).hexdigest(), len(data), name.endswith(extract))
        for name, data in files.items()), "test")


def test_fetch_downloads_verifies_unpacks_and_shards(tmp_path):
    files = {"flower_photos.tgz": _photos_tgz()}
    with RangeServer(files) as srv:
        m = fetch("tiny", tmp_path / "out", options=OPTS, progress=False, spec=_spec(srv.url, files))
    assert m["num_samples"] == 12 and m["classes"] == ["daisy", "roses", "tulips"]
    assert m["source"]["dataset"] == "tiny" and m["source"]["sha256"]["flower_photos.tgz"]
    assert verify(tmp_path / "out")["samples"] == 12
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([s["name"] for s in m["shards"]] + ["manifest.json"])  # no downloads, no debris
    assert not list(tmp_path.rglob("outside.jpg"))


def test_partial_download_is_resumed_with_a_range_request(tmp_path):
    data = bytes(range(256)) * 4000
    dest = tmp_path / "dl" / "big.bin"
    dest.parent.mkdir()
    (dest.parent / "big.bin.part").write_bytes(data[:300_000])
    with RangeServer({"big.bin": data}) as srv:
        download(f"{srv.url}/big.bin", dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data), progress=False)
    assert srv.requests == [("big.bin", "bytes=300000-")]
    assert dest.read_bytes() == data and not (dest.parent / "big.bin.part").exists()


def test_dropped_connection_resumes_automatically(tmp_path):
    data = np.random.default_rng(0).bytes(2_500_000)
    with RangeServer({"x.bin": data}, drop_first_at=1_000_000) as srv:
        download(f"{srv.url}/x.bin", tmp_path / "x.bin", sha256=hashlib.sha256(data).hexdigest(), size=None,
                 progress=False)
    assert srv.requests[0] == ("x.bin", None)
    assert srv.requests[1][1] is not None and int(srv.requests[1][1][6:-1]) >= 1_000_000
    assert (tmp_path / "x.bin").read_bytes() == data


def test_checksum_mismatch_is_one_error_and_leaves_nothing_behind(tmp_path):
    files = {"flower_photos.tgz": _photos_tgz()}
    out = tmp_path / "out"
    with RangeServer(files) as srv:
        spec = _spec(srv.url, files)
        bad = DatasetSpec(spec.name, spec.layout, (RemoteFile(spec.files[0].url, "0" * 64, None, True),), "")
        with pytest.raises(UserError, match="checksum mismatch.*the download was removed"):
            fetch("tiny", out, options=OPTS, progress=False, spec=bad)
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tar")) and not list(out.rglob("*.part"))
    assert not list(out.rglob("*.jpg"))


def test_oxford102_layout_through_fetch(tmp_path):
    labels = [1, 2, 2, 1, 3, 3]
    files = {
        "102flowers.tgz": _tgz({f"jpg/image_{i:05d}.jpg": jpeg_bytes(photo(i, 30, 40)) for i in range(1, 7)}),
    }
    for name, data in (("imagelabels.mat", {"labels": np.array([labels])}),
                       ("setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]),
                                      "tstid": np.array([[5, 6]])})):
        buf = io.BytesIO()
        savemat(buf, data)
        files[name] = buf.getvalue()
    with RangeServer(files) as srv:
        spec = _spec(srv.url, files, layout="oxford102")
        m = fetch("x", tmp_path / "out", options=OPTS, progress=False, spec=spec)
    assert m["counts"]["split"] == {"test": 2, "train": 2, "val": 2}
    assert m["counts"]["class"] == {"001": 2, "002": 2, "003": 2}


def test_cli_fetch_from_a_mirror_with_wrong_files_fails_cleanly(tmp_path):
    """The real oxford102 entry, pointed at a mirror serving stand-ins: the built-in checksums catch it."""
    fakes = {"102flowers.tgz": _photos_tgz(), "imagelabels.mat": b"x" * 502, "setid.mat": b"y" * 14989}
    out = tmp_path / "out"
    with RangeServer(fakes) as srv:
        res = run_cli("data", "fetch", "oxford102", "--out", str(out), "--mirror", srv.url, "--no-progress")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "102flowers.tgz" in lines[0] and "got" in lines[0] and "expected 344862509" in lines[0]
    assert not out.exists()  # nothing half-written: not even the empty folder


def test_registry_lists_the_official_archives_with_checksums():
    assert set(DATASETS) == {"oxford102", "oxford17", "tf-flowers"}
    for spec in DATASETS.values():
        for f in spec.files:
            assert f.url.startswith("https://") and re.fullmatch(r"[0-9a-f]{64}", f.sha256)
    with pytest.raises(UserError, match="unknown data set 'roses'"):
        fetch("roses", Path("unused"), progress=False)
