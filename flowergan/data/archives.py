"""Safe extraction of .tar/.tar.gz/.tgz/.zip: regular files and folders only, never outside the target folder.

Members with absolute paths, `..`, links, devices or FIFOs are refused and reported, never written; we copy
file contents ourselves instead of calling tarfile/zipfile extraction, so no member metadata is trusted.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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


def _extract_tar(archive: Path, root: Path, result: Extracted) -> None:
    seen: set[str] = set()
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e})") from None
    with tf:
        try:
            for m in tf:
                rel = safe_member_path(m.name)
                if isinstance(rel, str):
                    result.refused.append((m.name, rel))
                    continue
                if m.isdir():
                    continue
                if m.issym() or m.islnk():
                    result.refused.append((m.name, f"refused: link to {m.linkname!r}"))
                    continue
                if m.ischr() or m.isblk() or m.isfifo():
                    result.refused.append((m.name, "refused: device or FIFO"))
                    continue
                if not m.isreg():
                    result.refused.append((m.name, "refused: not a regular file"))
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
                    _copy_capped(tf.extractfile(m), dest, m.size)
                except ValueError as e:
                    dest.unlink(missing_ok=True)
                    result.refused.append((m.name, str(e)))
                    continue
                except (NotADirectoryError, IsADirectoryError, FileExistsError):
                    result.refused.append((m.name, "refused: a file and a folder share this path"))
                    continue
                result.files += 1
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{archive}: the archive is damaged after {result.files} files ({e}); "
                            "download it again") from None


def _extract_zip(archive: Path, root: Path, result: Extracted) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from None
    seen: set[str] = set()
    with zf:
        for info in zf.infolist():
            rel = safe_member_path(info.filename)
            if isinstance(rel, str):
                result.refused.append((info.filename, rel))
                continue
            if info.is_dir():
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                result.refused.append((info.filename, "refused: symbolic link"))
                continue
            if kind not in (0, stat.S_IFREG):
                result.refused.append((info.filename, "refused: device, FIFO or other special file"))
                continue
            if info.flag_bits & 0x1:
                result.refused.append((info.filename, "refused: encrypted member"))
                continue
            dest = _inside(root, rel)
            if dest is None:
                result.refused.append((info.filename, "refused: would be written outside the output folder"))
                continue
            if str(rel) in seen:
                result.refused.append((info.filename, "refused: second member with the same name"))
                continue
            seen.add(str(rel))
            try:
                with zf.open(info) as src:
                    _copy_capped(src, dest, info.file_size)
            except ValueError as e:
                dest.unlink(missing_ok=True)
                result.refused.append((info.filename, str(e)))
                continue
            except (NotADirectoryError, IsADirectoryError, FileExistsError):
                result.refused.append((info.filename, "refused: a file and a folder share this path"))
                continue
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                dest.unlink(missing_ok=True)
                result.refused.append((info.filename, f"damaged member: {e}"))
                continue
            result.files += 1


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
