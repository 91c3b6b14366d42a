"""Find, verify and (if allowed) download the FID Inception weights; load them without unpickling.

Search order: an explicit path (`--inception-weights`), then `$FLOWERGAN_INCEPTION_WEIGHTS`, then the
cache directory (`$FLOWERGAN_CACHE_DIR`, default `~/.cache/flowergan/`), then a download into that
cache whose SHA-256 is checked before the file is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path

import torch

from flowergan.data.digest import sha256_file as file_sha256
from flowergan.errors import UserError

# torch-fidelity's port of the TensorFlow Inception graph of 2015-12-05 (the one FID was defined with).
OFFICIAL_NAME = "weights-inception-2015-12-05-6726825d.pth"
OFFICIAL_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{OFFICIAL_NAME}"
OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

ENV_WEIGHTS = "FLOWERGAN_INCEPTION_WEIGHTS"
ENV_URL = "FLOWERGAN_INCEPTION_URL"  # a mirror, for clusters without GitHub access
ENV_CACHE = "FLOWERGAN_CACHE_DIR"


def cache_dir() -> Path:
    """Where weights, reference statistics and oracles are cached."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "flowergan").expanduser()


def _three_ways() -> str:
    return (f"pass --inception-weights PATH, set {ENV_WEIGHTS}=PATH, or put {OFFICIAL_NAME} in {cache_dir()}/ "
            f"(it is downloaded there automatically when {OFFICIAL_URL} can be reached)")


def locate_weights(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The weights file to use, downloading the official one into the cache if nothing else is found."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"--inception-weights {p}: no such file")
        return p
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise UserError(f"{ENV_WEIGHTS}={env}: no such file")
        return p
    cached = cache_dir() / OFFICIAL_NAME
    if cached.is_file():
        return cached
    if not download:
        raise UserError(f"no FID Inception weights found: {_three_ways()}")
    url = os.environ.get(ENV_URL) or OFFICIAL_URL
    try:
        return fetch(url, cached, OFFICIAL_SHA256)
    except OSError as e:  # offline, DNS, refused, HTTP error: all mean "could not download"
        raise UserError(f"no FID Inception weights and the download failed ({e}): {_three_ways()}") from None


def fetch(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` atomically; raise UserError (and keep nothing) if its SHA-256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise UserError(f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}: "
                            "refusing to use it")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # size and mtime are only the cache key


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, computed once per (path, size, mtime) in this process."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def is_official(path: str | os.PathLike) -> bool:
    """True when the file is byte-for-byte the published TF-Inception port."""
    return sha256_file(path) == OFFICIAL_SHA256


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights as a state dict of tensors, read with weights_only=True (never unpickles code)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a pickle with code, not a torch file at all
        raise UserError(f"{path}: not a loadable Inception weights file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return sd
