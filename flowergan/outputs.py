"""Outputs that appear whole or not at all: build in a temporary file or folder beside the target, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from flowergan.errors import UserError


def temporary_beside(out: Path, *, directory: bool, option: str = "--out") -> Path:
    """An empty temporary file or folder next to `out` (the final rename stays on one file system); a place
    that cannot be written is a user error naming `option`."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            return Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
        fd, name = tempfile.mkstemp(prefix=f".tmp-{out.stem}-", suffix=out.suffix, dir=out.parent)
        os.close(fd)
        return Path(name)
    except OSError as e:
        raise UserError(f"{option} {out}: cannot write there ({e.strerror or e})") from None


def check_free(out: Path, force: bool, option: str = "--out") -> None:
    """Refuse to overwrite `out` unless --force."""
    if out.exists() and not force:
        raise UserError(f"{option} {out} already exists; choose another path or pass --force to replace it")


def publish(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out` (replacing an old `out`) with the permissions of an ordinary file:
    mkstemp/mkdtemp make them private, and these outputs are meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *(tmp.rglob("*") if tmp.is_dir() else [])]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    swap_in(tmp, out)


def swap_in(tmp: Path, out: Path) -> Path:
    """Rename the finished `tmp` to `out`; an old `out` is moved aside first and then deleted, so a reader sees
    the old one or the new one, never a mix (a directory cannot be renamed over a non-empty one)."""
    old = out.with_name(f".tmp-old-{out.name}-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    remove(old)
    return out


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str | Callable[[IO[bytes]], object]) -> Path:
    """Write `path` whole or not at all: into a temporary file beside it, flushed to disk, then renamed over it.

    `data` is the bytes (or text, UTF-8), or a function that writes to the open binary file (np.savez, say).
    The file gets an ordinary file's permissions (mkstemp's are private). A crash or a parallel writer never
    leaves a torn file: readers see the old one or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
