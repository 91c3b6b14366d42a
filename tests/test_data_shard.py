"""`flowergan data shard` / `verify` end to end on awkward folders, archives, the Oxford layout and real flowers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from test_data_support import bomb_png, jpeg_bytes, make_class_folders, photo, png_bytes, run_cli

from flowergan.data.format import read_manifest, verify
from flowergan.data.ingest.images import ImageOptions
from flowergan.data.ingest.sharder import ShardOptions, shard_source
from flowergan.errors import UserError

# ../shared beside the clone (as CI lays it out), or FLOWERGAN_SHARED.
SHARED = Path(os.environ.get("FLOWERGAN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FLOWERS5 = SHARED / "data" / "flowers5-128.tar"
SMALL = ShardOptions(image=ImageOptions(size=16), workers=1)


def _shard(src, out, **kw):
    opts = ShardOptions(image=ImageOptions(size=kw.pop("size", 16), min_size=kw.pop("min_size", 0)),
                        workers=kw.pop("workers", 1), **kw)
    return shard_source(src, out, opts, progress=False)


def _awkward(root: Path) -> dict[str, str]:
    """Class folders with every kind of good and bad file; returns {relative path: expected reason} of the bad."""
    make_class_folders(root, per_class=3, classes=("daisy", "rose"))
    d = root / "daisy"
    Image.fromarray(photo(7, 40, 40)).convert("CMYK").save(d / "cmyk.jpg", quality=90)
    Image.fromarray(np.asarray(Image.fromarray(photo(8, 30, 30)).convert("L")).astype(np.uint16) * 257) \
        .save(d / "grey16.png")
    Image.new("RGBA", (30, 30), (255, 0, 0, 100)).save(d / "rgba.png")
    Image.new("LA", (30, 30), (80, 200)).save(d / "la.png")
    Image.fromarray(photo(9, 30, 30)).convert("P").save(d / "palette.gif", transparency=0)
    (d / "tiny.png").write_bytes(png_bytes(Image.fromarray(photo(10, 8, 8))))  # upscaled with a warning
    (d / "copy.jpg").write_bytes((root / "rose" / "img001.jpg").read_bytes())  # exact duplicate
    bad = {
        "daisy/empty.jpg": "empty file",
        "daisy/truncated.jpg": "truncated",
        "daisy/page.jpg": "HTML",
        "daisy/bomb.png": "decompression bomb",
        "daisy/noise.png": "image",
        "rose/dangling.jpg": "unreadable",
        "rose/pipe.jpg": "not a regular file",
    }
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(jpeg_bytes(photo(11, 64, 64))[:400])
    (d / "page.jpg").write_bytes(b"<html><body>Access denied</body></html>")
    (d / "bomb.png").write_bytes(bomb_png())
    (d / "noise.png").write_bytes(os.urandom(300))
    os.symlink(root / "nowhere.jpg", root / "rose" / "dangling.jpg")
    os.mkfifo(root / "rose" / "pipe.jpg")  # would hang a naive reader
    (d / "notes.txt").write_text("not an image")
    (d / ".DS_Store").write_bytes(b"\x00\x00")
    return bad


def test_awkward_folder_keeps_every_good_image_and_reports_every_bad_one(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    bad = _awkward(src)
    m = _shard(src, out, workers=2)
    assert m["classes"] == ["daisy", "rose"]
    # daisy: 3 photos + cmyk, grey16, rgba, la, palette, tiny, copy; rose: 3 photos, one the same file as copy.jpg
    assert m["num_samples"] == 12 and m["counts"]["class"] == {"daisy": 10, "rose": 2}
    reasons = {r["path"]: r["reason"] for r in m["rejected"]}
    assert set(reasons) == set(bad)
    for path, reason in bad.items():
        assert reason.lower() in reasons[path].lower(), (path, reasons[path])
    assert m["duplicates"] == [{"path": "rose/img001.jpg", "duplicate_of": "daisy/copy.jpg"}]
    assert [w["path"] for w in m["warnings"]] == ["daisy/tiny.png"]
    assert {i["path"] for i in m["ignored"]} == {"daisy/notes.txt", "daisy/.DS_Store"}
    assert verify(out)["samples"] == 12
    assert not list(out.glob(".staging-*"))


def test_min_size_rejects_small_images(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src, per_class=2, size=(20, 20))
    (src / "daisy" / "big.jpg").write_bytes(jpeg_bytes(photo(1, 64, 48)))
    m = _shard(src, tmp_path / "out", min_size=30)
    assert m["num_samples"] == 1 and len(m["rejected"]) == 4
    assert all("--min-size 30" in r["reason"] for r in m["rejected"])


def test_same_input_gives_byte_identical_shards(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src, per_class=10)
    a = _shard(src, tmp_path / "a", workers=1, shard_size=6)
    b = _shard(src, tmp_path / "b", workers=2, shard_size=6)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert len(a["shards"]) == 4 and [s["samples"] for s in a["shards"]] == [5, 5, 5, 5]
    for s in a["shards"]:
        assert (tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
    a.pop("source"), b.pop("source")
    assert a == b
    c = _shard(src, tmp_path / "c", shard_size=6, seed=1)  # another seed shuffles differently
    assert [s["sha256"] for s in c["shards"]] != [s["sha256"] for s in a["shards"]]


def test_manifest_records_zlib_and_a_pixel_fingerprint_that_survives_another_deflate(tmp_path):
    """Shard bytes depend on the zlib build (zlib-ng deflates differently); the pixel fingerprint does not."""
    import zlib

    from flowergan.data.format import pixel_fingerprint
    from flowergan.data.ingest.writer import write_shards
    from flowergan.data.png import encode_png

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(6)]

    def shards(level: int, folder: str) -> list[dict]:
        samples = [{"data": encode_png(x, level=level), "label": 0, "meta": {}} for x in images]
        return write_shards(samples, tmp_path / folder, "s", "png", 3, seed=0)

    fast, best = shards(1, "a"), shards(9, "b")  # two deflate outputs of the same pixels
    assert [s["sha256"] for s in fast] != [s["sha256"] for s in best]
    assert [s["pixels_sha256"] for s in fast] == [s["pixels_sha256"] for s in best]
    assert pixel_fingerprint(fast, 8) == pixel_fingerprint(best, 8) != ""
    images[0][0, 0, 0] ^= 1  # one pixel changed: another fingerprint
    assert pixel_fingerprint(shards(1, "c"), 8) != pixel_fingerprint(fast, 8)

    src = tmp_path / "src"
    make_class_folders(src, per_class=3)
    manifest = _shard(src, tmp_path / "out", workers=1)
    assert manifest["zlib"] == zlib.ZLIB_RUNTIME_VERSION and len(manifest["pixel_fingerprint"]) == 16


def test_reshard_into_the_same_folder_replaces_the_old_set(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src, per_class=10)
    _shard(src, tmp_path / "out", shard_size=4)
    m = _shard(src, tmp_path / "out", shard_size=10)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [s["name"] for s in m["shards"]] + ["manifest.json"])


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, link
    return ti, None


def test_archive_traversal_links_and_devices_are_refused_and_nothing_escapes(tmp_path):
    img = jpeg_bytes(photo(1))
    archive = tmp_path / "evil.tgz"
    _tar_with(archive, [
        _file("pics/rose/ok1.jpg", img), _file("pics/rose/ok2.jpg", jpeg_bytes(photo(2))),
        _file("pics/daisy/ok3.jpg", jpeg_bytes(photo(3))),
        _file("../escaped.jpg", img), _file("/tmp/absolute.jpg", img), _file("pics/rose/../../../up.jpg", img),
        _special("pics/rose/link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        _special("pics/rose/hard.jpg", tarfile.LNKTYPE, "pics/rose/ok1.jpg"),
        _special("pics/rose/dev.jpg", tarfile.CHRTYPE), _special("pics/rose/fifo.jpg", tarfile.FIFOTYPE),
    ])
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    m = _shard(archive, out)
    assert m["num_samples"] == 3 and m["classes"] == ["daisy", "rose"]
    reasons = {r["path"].split(":", 1)[1]: r["reason"] for r in m["rejected"]}
    assert "'..'" in reasons["../escaped.jpg"] and "'..'" in reasons["pics/rose/../../../up.jpg"]
    assert "absolute" in reasons["/tmp/absolute.jpg"]
    assert "link" in reasons["pics/rose/link.jpg"] and "link" in reasons["pics/rose/hard.jpg"]
    assert "device" in reasons["pics/rose/dev.jpg"] and "FIFO" in reasons["pics/rose/fifo.jpg"]
    created = set(tmp_path.rglob("*")) - before
    assert all(out in p.parents or p == out or p in out.parents for p in created), created
    assert not (tmp_path / "escaped.jpg").exists() and not Path("/tmp/absolute.jpg").exists()


def test_zip_archive_of_a_flat_folder_with_a_symlink_member(tmp_path):
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"roses/{i}.png", png_bytes(Image.fromarray(photo(i, 20, 20))))
        link = zipfile.ZipInfo("roses/link.png")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
        zf.writestr("../../evil.png", b"x")
    m = _shard(archive, tmp_path / "out")
    assert m["num_samples"] == 3 and m["classes"] == ["roses"] and m["source"]["layout"] == "flat"
    assert sorted(r["reason"].split(":")[0] for r in m["rejected"]) == ["refused", "refused"]


def _oxford(root: Path, labels: list[int], trn, val, tst) -> None:
    (root / "jpg").mkdir(parents=True)
    for i in range(1, len(labels) + 1):
        (root / "jpg" / f"image_{i:05d}.jpg").write_bytes(jpeg_bytes(photo(i, 50, 40)))
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(root / "setid.mat", {"trnid": np.array([trn], np.uint16), "valid": np.array([val], np.uint16),
                                 "tstid": np.array([tst], np.uint16)})


def test_oxford102_layout_labels_and_splits(tmp_path):
    src = tmp_path / "oxford"
    _oxford(src, [1, 1, 2, 2, 3, 3, 3, 1, 2, 3], trn=[1, 3, 5], val=[2, 4, 6], tst=[7, 8, 9, 10])
    (src / "jpg" / "image_00011.jpg").write_bytes(jpeg_bytes(photo(99)))  # not listed: ignored
    m = _shard(src, tmp_path / "out")
    assert m["source"]["layout"] == "oxford102" and m["classes"] == ["001", "002", "003"]
    assert m["counts"]["split"] == {"test": 4, "train": 3, "val": 3}
    assert m["counts"]["class"] == {"001": 3, "002": 3, "003": 4}
    assert m["counts"]["class_split"]["003"] == {"test": 2, "train": 1, "val": 1}
    assert [i["path"] for i in m["ignored"]] == ["jpg/image_00011.jpg"]
    train_only = _shard(src, tmp_path / "train", splits=("train",))
    assert train_only["num_samples"] == 3 and train_only["counts"]["split"] == {"train": 3}
    with pytest.raises(UserError, match="--split bogus"):
        _shard(src, tmp_path / "x", splits=("bogus",))


def test_oxford102_missing_image_is_reported(tmp_path):
    src = tmp_path / "oxford"
    _oxford(src, [1, 2, 1], trn=[1], val=[2], tst=[3])
    (src / "jpg" / "image_00002.jpg").unlink()
    m = _shard(src, tmp_path / "out")
    assert m["num_samples"] == 2
    assert m["rejected"] == [{"path": "jpg/image_00002.jpg",
                              "reason": "listed in imagelabels.mat but missing from jpg/"}]


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file or folder"),
    ("inside", "must not be inside"),
    ("foreign", "not empty"),
    ("empty", "no images found"),
    ("allbad", "no usable images"),
    ("badmat", "imagelabels.mat"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, case, needle):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    if case == "missing":
        src = tmp_path / "nope"
    elif case == "inside":
        make_class_folders(src, per_class=1)
        out = src / "shards"
    elif case == "foreign":
        make_class_folders(src, per_class=1)
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    elif case == "empty":
        (src / "readme.txt").write_text("nothing here")
    elif case == "allbad":
        (src / "a.jpg").write_bytes(b"<html></html>")
    elif case == "badmat":
        (src / "jpg").mkdir()
        (src / "imagelabels.mat").write_bytes(b"garbage")
    res = run_cli("data", "shard", str(src), "--out", str(out), "--no-progress", "--workers", "1")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    if case == "foreign":
        assert (out / "precious.txt").read_text() == "keep me" and not (out / "manifest.json").exists()


def test_verify_names_the_first_problem(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_class_folders(src, per_class=4)
    _shard(src, out, shard_size=3)
    assert verify(out) == {"shards": 3, "samples": 8, "classes": 2, "resolution": 16}
    m = read_manifest(out)
    victim = out / m["shards"][1]["name"]
    with tarfile.open(victim) as tf:
        png = next(ti for ti in tf.getmembers() if ti.name.endswith(".png"))
    data = bytearray(victim.read_bytes())
    data[png.offset_data + png.size // 2] ^= 0xFF  # one flipped bit inside an image
    victim.write_bytes(bytes(data))
    res = run_cli("data", "verify", str(out))
    assert res.returncode == 2 and victim.name in res.stderr and "sha256" in res.stderr, res.stderr
    # With the manifest's hash "fixed", the decode pass still finds the damaged image.
    m["shards"][1]["sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=f"{victim.name}:.*does not decode"):
        verify(out)
    (out / m["shards"][0]["name"]).unlink()
    with pytest.raises(UserError, match=r"cannot open shard.*No such file"):
        verify(out)


@pytest.mark.slow
def test_real_flowers5_tar(tmp_path):
    """The 4,317 real photos: every one is kept or named as an exact duplicate; verify passes."""
    if not FLOWERS5.is_file():
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: a missing file is a failure there
            pytest.fail(f"{FLOWERS5} is missing (set FLOWERGAN_SHARED to the shared folder)")
        pytest.skip(f"{FLOWERS5} is not available (set FLOWERGAN_SHARED to the shared folder)")
    out = tmp_path / "flowers64"
    res = run_cli("data", "shard", str(FLOWERS5), "--out", str(out), "--size", "64", "--workers", "2",
                  "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "kept 4311" in res.stdout and "duplicates 6" in res.stdout
    m = read_manifest(out)
    readme = {"daisy": 764, "dandelion": 1052, "rose": 784, "sunflower": 733, "tulip": 984}
    dup_by_class: dict[str, int] = {}
    for d in m["duplicates"]:
        cls = d["path"].split("/")[1]
        dup_by_class[cls] = dup_by_class.get(cls, 0) + 1
    assert {c: m["counts"]["class"][c] + dup_by_class.get(c, 0) for c in readme} == readme
    assert m["rejected"] == [] and m["resolution"] == 64 and len(m["shards"]) == 32
    assert verify(out)["samples"] == 4311
