"""One image at a time: every mode to 8-bit RGB correctly, EXIF orientation, every kind of bad file rejected."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image
from test_data_support import bomb_png, jpeg_bytes, photo, png_bytes

from flowergan.data.ingest.images import ImageOptions, Rejected, decode, open_image, process, to_rgb
from flowergan.data.loader.tar_reader import iter_samples
from flowergan.data.png import decode_png_batch, decode_png_fast, encode_png

OPTS = ImageOptions(size=16, crop="none")


def _pixels(data: bytes, size: int = 16) -> np.ndarray:
    out = process(data, ImageOptions(size=size, crop="none"))
    arr = np.asarray(Image.open(io.BytesIO(out.data)))
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
    return arr


def test_rgba_half_transparent_red_is_composited_over_white():
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 128))
    assert tuple(_pixels(png_bytes(img))[8, 8]) == (255, 127, 127)


def test_la_and_palette_transparency_go_over_white():
    la = Image.new("LA", (16, 16), (0, 0))  # black, fully transparent
    assert tuple(_pixels(png_bytes(la))[4, 4]) == (255, 255, 255)
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 1  # index 1 (green) is transparent
    buf = io.BytesIO()
    p.save(buf, "GIF", transparency=1)
    assert tuple(_pixels(buf.getvalue())[4, 4]) == (255, 255, 255)
    p.info.pop("transparency")
    assert tuple(_pixels(png_bytes(p))[4, 4]) == (0, 255, 0)  # without transparency the colour stays


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.full((16, 16), 32896, np.uint16)  # 0x8080: mid grey in 16 bits
    arr[:8] = 65535
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = _pixels(png_bytes(img))
    assert tuple(out[12, 12]) == (128, 128, 128)
    assert tuple(out[2, 2]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["CMYK", "L", "1", "YCbCr"])
def test_other_modes_become_rgb(mode):
    img = Image.fromarray(photo(1, 32, 32)).convert(mode)
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (32, 32)


def test_cmyk_jpeg_white_stays_white():
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    assert (_pixels(buf.getvalue()) >= 250).all()


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue: a landscape picture
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displays rotated 90 degrees clockwise (portrait, red on top)
    out = _pixels(jpeg_bytes(arr, exif=exif.tobytes()))
    assert out[2, 8, 0] > 200 and out[2, 8, 2] < 60  # top is red
    assert out[13, 8, 2] > 200 and out[13, 8, 0] < 60  # bottom is blue


def test_centre_crop_keeps_the_middle():
    arr = np.zeros((40, 120, 3), np.uint8)
    arr[:, 40:80] = 255  # white middle third, black sides
    out = process(png_bytes(Image.fromarray(arr)), ImageOptions(size=16, crop="center"))
    assert (np.asarray(Image.open(io.BytesIO(out.data))) > 250).all()


def test_small_images_are_upscaled_with_a_warning_or_rejected_by_min_size():
    data = png_bytes(Image.fromarray(photo(2, 10, 12)))
    assert "upscaled from 10x12" in process(data, ImageOptions(size=16)).warning
    assert process(png_bytes(Image.fromarray(photo(2, 40, 40))), ImageOptions(size=16)).warning is None
    with pytest.raises(Rejected, match="min-size"):
        process(data, ImageOptions(size=16, min_size=12))


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(photo(3, 64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (_truncated_jpeg(), "truncated"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML page"),
    (b"just some notes\n", "text file"),
    (bytes(range(256)) * 4, "not an image"),
    (bomb_png(), "decompression bomb"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
])
def test_bad_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected, match=reason):
        process(data, OPTS)


def test_bomb_guard_cannot_be_switched_off_globally(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(Rejected, match="bomb"):
        open_image(bomb_png())
    assert Image.MAX_IMAGE_PIXELS is None  # restored to the caller's setting


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_formats_round_trip(fmt):
    data = png_bytes(Image.fromarray(photo(4, 32, 32)))
    out = process(data, ImageOptions(size=32, format=fmt, quality=100))
    arr = decode(out.data)
    assert arr.shape == (32, 32, 3)
    if fmt in ("png", "webp"):  # lossless
        assert (arr == photo(4, 32, 32)).all()


def test_png_codec_round_trip_and_batch_decoder():
    arrs = [np.random.default_rng(i).integers(0, 256, (9, 7, 3), dtype=np.uint8) for i in range(5)]
    blobs = [encode_png(a) for a in arrs]
    for a, b in zip(arrs, blobs):
        assert (np.asarray(Image.open(io.BytesIO(b))) == a).all()  # a standard PNG
        assert (decode_png_fast(b) == a).all()
    pil_png = png_bytes(Image.fromarray(arrs[0]))  # Pillow picks its own filters: not for the fast path
    batch, slow = decode_png_batch(blobs + [pil_png], 9, 7)
    assert slow == [5]
    assert all((batch[k] == arrs[k]).all() for k in range(5))
    assert (decode(pil_png) == arrs[0]).all()  # the general decoder handles it


def test_png_bytes_do_not_depend_on_anything_but_the_pixels():
    a = photo(5, 16, 16)
    assert encode_png(a) == encode_png(a.copy())


def test_tar_reader_matches_tarfile_with_long_names_and_pax(tmp_path):
    path = tmp_path / "x.tar"
    members = {"a/" + "long" * 40 + ".png": b"1" * 700, "a/" + "long" * 40 + ".cls": b"3",
               "k2.png": b"x" * 512, "k2.json": "{\"s\": \"\u00e9\"}".encode(), "k3.cls": b""}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1.5  # a float mtime forces a PAX header
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("k3.lnk")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "k2.png"
        tf.addfile(ti)
    with open(path, "rb") as f:
        samples = list(iter_samples(f))
    assert [s["__key__"] for s in samples] == ["a/" + "long" * 40, "k2", "k3"]
    assert samples[0]["png"] == b"1" * 700 and samples[0]["cls"] == b"3"
    assert samples[1]["json"] == members["k2.json"] and samples[2] == {"__key__": "k3", "cls": b""}
