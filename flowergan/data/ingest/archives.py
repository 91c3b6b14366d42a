"""Safe extraction of .tar/.tar.gz/.tgz/.zip: regular files and folders only, never outside the target folder.

Members with absolute paths, `..`, links, devices or FIFOs are refused and reported, never written; we copy
file contents ourselves instead of calling tarfile/zipfile extraction, so no member metadata is trusted.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from flowergan.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MAX_MEMBER_BYTES = 1 << 30  # no flower photo is larger; guards against zip bombs and lying headers


@dataclass
class Extracted:
    root: Path
    files: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)


def is_archive(path: Path) -> bool:
    """True for the archive types `flowergan data shard` unpacks."""
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


def safe_member_path(name: str) -> PurePosixPath | str:
    """The relative path a member may be written to, or the reason it is refused."""
    if "\x00" in name:
        return "refused: NUL byte in the member name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "refused: absolute path"
    parts = [p for p in PurePosixPath(norm).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return "refused: '..' in the path (would escape the output folder)"
    if not parts:
        return "refused: empty name"
    return PurePosixPath(*parts)


def _copy_capped(src, dest: Path, declared: int) -> None:
    if declared > MAX_MEMBER_BYTES:
        raise ValueError(f"refused: {declared} bytes is larger than the {MAX_MEMBER_BYTES} byte limit")
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > MAX_MEMBER_BYTES:
                raise ValueError(f"refused: more than {MAX_MEMBER_BYTES} bytes")
            out.write(chunk)


def _inside(root: Path, rel: PurePosixPath) -> Path | None:
    dest = (root / rel).resolve()
    return dest if dest == root or root in dest.parents else None


@dataclass(frozen=True)
class _Member:
    """One archive member, tar or zip alike: its name, what it is, its declared size and how to read it."""

    name: str
    kind: str  # "dir", "file", or the reason it is refused ("refused: ...")
    size: int
    open: Callable[[], IO[bytes]]


def _tar_open(tf: tarfile.TarFile, m: tarfile.TarInfo) -> IO[bytes]:
    f = tf.extractfile(m)
    if f is None:  # only for members that are not regular files, which never get here
        raise ValueError("refused: not a regular file")
    return f


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for m in tf:
        if m.isdir():
            kind = "dir"
        elif m.issym() or m.islnk():
            kind = f"refused: link to {m.linkname!r}"
        elif m.ischr() or m.isblk() or m.isfifo():
            kind = "refused: device or FIFO"
        elif not m.isreg():
            kind = "refused: not a regular file"
        else:
            kind = "file"
        yield _Member(m.name, kind, m.size, functools.partial(_tar_open, tf, m))


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir():
            kind = "dir"
        elif mode == stat.S_IFLNK:
            kind = "refused: symbolic link"
        elif mode not in (0, stat.S_IFREG):
            kind = "refused: device, FIFO or other special file"
        elif info.flag_bits & 0x1:
            kind = "refused: encrypted member"
        else:
            kind = "file"
        yield _Member(info.filename, kind, info.file_size, functools.partial(zf.open, info))


def _extract_members(members: Iterator[_Member], root: Path, result: Extracted,
                     damaged: tuple[type[BaseException], ...] = ()) -> None:
    """The one member check for every archive type: write the safe regular files, report the rest.

    `damaged`: errors that spoil one member only (a zip's members are independent; a tar stream is not).
    """
    seen: set[str] = set()
    for m in members:
        rel = safe_member_path(m.name)
        if isinstance(rel, str):
            result.refused.append((m.name, rel))
            continue
        if m.kind == "dir":
            continue
        if m.kind != "file":
            result.refused.append((m.name, m.kind))
            continue
        dest = _inside(root, rel)
        if dest is None:
            result.refused.append((m.name, "refused: would be written outside the output folder"))
            continue
        if str(rel) in seen:
            result.refused.append((m.name, "refused: second member with the same name"))
            continue
        seen.add(str(rel))
        try:
            with m.open() as src:
                _copy_capped(src, dest, m.size)
        except ValueError as e:
            dest.unlink(missing_ok=True)
            result.refused.append((m.name, str(e)))
            continue
        except (NotADirectoryError, IsADirectoryError, FileExistsError):
            result.refused.append((m.name, "refused: a file and a folder share this path"))
            continue
        except damaged as e:
            dest.unlink(missing_ok=True)
            result.refused.append((m.name, f"damaged member: {e}"))
            continue
        result.files += 1


def _extract_tar(archive: Path, root: Path, result: Extracted) -> None:
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e})") from None
    with tf:
        try:
            _extract_members(_tar_members(tf), root, result)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{archive}: the archive is damaged after {result.files} files ({e}); "
                            "download it again") from None


def _extract_zip(archive: Path, root: Path, result: Extracted) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        _extract_members(_zip_members(zf), root, result, damaged=(zipfile.BadZipFile, OSError, EOFError))


def extract(archive: Path, root: Path) -> Extracted:
    """Unpack `archive` into the (new or empty) folder `root`, refusing unsafe members; return what happened."""
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    result = Extracted(root)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, root, result)
        else:
            _extract_tar(archive, root, result)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    result.refused.sort()
    return result


def remove_tree(path: Path) -> None:
    """Delete a temporary folder we made (ignore it if already gone)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        os.unlink(path)
