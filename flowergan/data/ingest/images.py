"""One image in, one square RGB image out: safe open, EXIF orientation, any mode to 8-bit RGB, crop, resize, encode.

Every way a file can be bad raises `Rejected(reason)`; the sharder reports it by path and carries on.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from flowergan.data.png import decode_png_fast, encode_png

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga"})
FORMATS = ("png", "jpg", "webp")
CROPS = ("center", "none")
# Pillow's own default; we pin it so a library that sets Image.MAX_IMAGE_PIXELS = None cannot switch the guard off.
MAX_PIXELS = 89_478_485


class Rejected(Exception):
    """This file cannot become a training image; str(e) is the reason shown to the user."""


@dataclass(frozen=True)
class ImageOptions:
    """How every image is normalised before it is written into a shard."""

    size: int = 64
    crop: str = "center"
    format: str = "png"
    quality: int = 95
    min_size: int = 0


@dataclass(frozen=True)
class Processed:
    data: bytes
    warning: str | None  # e.g. upscaled from a smaller original


def _looks_like_text(head: bytes) -> str | None:
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image: an HTML page saved with an image extension"
    if low.startswith((b"<?xml", b"<svg")):
        return "not a raster image: XML/SVG"
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head[:256]):
        return "not an image: a text file"
    return None


def open_image(data: bytes, draft: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode `data` with the decompression-bomb guard on; raise Rejected on any problem.

    Returns the image and its original size. `draft` > 0 lets JPEG decode at a reduced scale that is still at
    least `draft` pixels on each side (DCT scaling: several times faster on large photos).
    """
    if not data:
        raise Rejected("empty file")
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; treat the warning as the error it hints at.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise Rejected(f"decompression bomb guard: {w}x{h} pixels is more than {MAX_PIXELS}")
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched Pillow to 'best effort'; we want the error
                raise Rejected("Pillow is set to load truncated images (ImageFile.LOAD_TRUNCATED_IMAGES); refusing")
            img.load()
        except Rejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Rejected(f"decompression bomb guard: {e}") from None
        except UnidentifiedImageError:
            raise Rejected(_looks_like_text(data[:512]) or "not an image (unrecognised format)") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as e:
            text = str(e) or type(e).__name__
            if "truncated" in text.lower() or isinstance(e, EOFError):
                raise Rejected(f"truncated image: {text}") from None
            raise Rejected(f"corrupt image: {text}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
    return img, (w, h)


def _alpha_over_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16*, I, F): scale to 8 bits instead of clipping as Image.convert does."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = (arr.astype(np.float64) / 257.0)
    elif img.mode == "F":
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        scaled = arr.astype(np.float64) * (255.0 if hi <= 1.0 else 255.0 / hi)
    else:  # 'I': 32-bit ints; Pillow stores 16-bit PNG/TIFF grey this way in older versions
        hi = int(arr.max()) if arr.size else 0
        scaled = arr.astype(np.float64) / (257.0 if hi > 255 else 1.0)
    grey = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            rgb = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if rgb is not None:  # None only for inPlace=True
                return rgb
        except Exception:  # a broken profile: fall back to the plain formula rather than lose the image
            pass
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency over white, 16-bit scaled, CMYK through its ICC profile."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        return _alpha_over_white(img) if "transparency" in img.info else img.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _alpha_over_white(img)
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(img)
    if mode in ("L", "1", "RGBX", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise Rejected(f"unsupported image mode {mode}: {e}") from None


def square(img: Image.Image, size: int, crop: str) -> Image.Image:
    """Centre-crop to a square (crop='center') or squeeze the whole picture (crop='none'), then resize."""
    w, h = img.size
    if crop == "center" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        # Lanczos is antialiased when shrinking; reducing_gap first box-reduces very large photos (much faster,
        # visually identical at the final size).
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def encode(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode HxWx3 uint8 as png (lossless, our fast codec), jpg or webp (quality 100 = lossless webp)."""
    if fmt == "png":
        return encode_png(rgb)
    buf = io.BytesIO()
    img = Image.fromarray(rgb, "RGB")
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, optimize=False)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, lossless=quality >= 100, method=4)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decode shard bytes to HxWx3 uint8 (fast path for our own PNGs, Pillow for everything else)."""
    arr = decode_png_fast(data)
    if arr is not None:
        return arr
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(to_rgb(img) if img.mode != "RGB" else img.convert("RGB"))


def process(data: bytes, opts: ImageOptions) -> Processed:
    """Raw file bytes to encoded square RGB bytes of opts.size; raise Rejected with the reason."""
    img, (w0, h0) = open_image(data, draft=2 * opts.size)
    if min(w0, h0) < 1:
        raise Rejected(f"empty image ({w0}x{h0})")
    if opts.min_size and min(w0, h0) < opts.min_size:
        raise Rejected(f"too small: {w0}x{h0} is under --min-size {opts.min_size}")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the image; the pixels are fine
        pass
    img = square(to_rgb(img), opts.size, opts.crop)
    rgb = np.asarray(img, dtype=np.uint8)
    warning = None
    if min(w0, h0) < opts.size:
        warning = f"upscaled from {w0}x{h0} to {opts.size}x{opts.size}"
    return Processed(encode(np.ascontiguousarray(rgb), opts.format, opts.quality), warning)
