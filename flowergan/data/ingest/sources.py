"""Find the images of a source and their labels: class folders, a flat folder, or the Oxford-102/17 layouts.

Archives are unpacked first (see archives.py); everything here works on a folder. Paths are reported relative to
the source root so manifests do not depend on where the source was unpacked.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from flowergan.data.ingest.images import IMAGE_EXTENSIONS
from flowergan.errors import UserError

LAYOUTS = ("auto", "folders", "flat", "oxford102", "oxford17")
OXFORD17_CLASSES = ("daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
                    "fritillary", "sunflower", "daisy", "colts_foot", "dandelion", "cowslip", "buttercup",
                    "windflower", "pansy")
_SKIP_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class Item:
    """One candidate image: where to read it, how to name it in reports, its label and split."""

    rel: str
    path: str
    label: int
    split: str = "all"


@dataclass
class Source:
    kind: str
    root: Path
    classes: list[str]
    items: list[Item]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # unusable before decoding: (rel, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # not images at all: (rel, reason)


@dataclass
class _Listing:
    files: list[tuple[str, Path]] = field(default_factory=list)  # (rel, path) image candidates
    rejected: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _SKIP_DIRS


def _walk(top: Path, base: Path, listing: _Listing, seen: set[str]) -> None:
    """Sorted recursive listing that follows folder links once (no loops) and never opens special files."""
    real = os.path.realpath(top)
    if real in seen:
        listing.ignored.append((top.relative_to(base).as_posix(), "folder link loop, not followed twice"))
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as e:
        listing.rejected.append((top.relative_to(base).as_posix() or ".", f"unreadable folder: {e.strerror}"))
        return
    for entry in entries:
        rel = Path(entry.path).relative_to(base).as_posix()
        if not _visible(entry.name):
            listing.ignored.append((rel, "hidden file or folder"))
            continue
        try:
            st = os.stat(entry.path)  # follows links: a dangling one is 'unreadable'
        except OSError as e:
            listing.rejected.append((rel, f"unreadable: {e.strerror or e}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            _walk(Path(entry.path), base, listing, seen)
        elif not _is_image_name(entry.name):
            listing.ignored.append((rel, "not an image file extension"))
        elif not stat.S_ISREG(st.st_mode):
            listing.rejected.append((rel, "not a regular file (device, FIFO or socket)"))
        else:
            listing.files.append((rel, Path(entry.path)))


def _list(top: Path, base: Path) -> _Listing:
    listing = _Listing()
    _walk(top, base, listing, set())
    return listing


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(p.name))


def _has_top_level_images(path: Path) -> bool:
    return any(p.is_file() and _is_image_name(p.name) and _visible(p.name) for p in path.iterdir())


def _unwrap(root: Path) -> Path:
    """Descend through wrapper folders (`flowers/`, `flower_photos/`) that hold nothing but one folder."""
    while not _oxford_kind(root) and not _has_top_level_images(root):
        subs = _subdirs(root)
        if len(subs) != 1:
            break
        root = subs[0]
    return root


def _oxford_kind(root: Path) -> str | None:
    if (root / "jpg").is_dir() and (root / "imagelabels.mat").is_file():
        return "oxford102"
    if (root / "jpg").is_dir() and (root / "jpg" / "files.txt").is_file():
        return "oxford17"
    return None


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        from scipy.io import loadmat

        data = loadmat(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a readable MATLAB file ({e})") from None
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(f"{path}: missing the variable(s) {', '.join(missing)} of the Oxford-102 layout")
    return data


def _oxford102(root: Path, base: Path) -> Source:
    labels = _loadmat(root / "imagelabels.mat", ("labels",))["labels"].ravel()
    try:
        labels = [int(v) for v in labels]
    except (TypeError, ValueError):
        raise UserError(f"{root / 'imagelabels.mat'}: 'labels' must be integers") from None
    if not labels or min(labels) < 1:
        raise UserError(f"{root / 'imagelabels.mat'}: 'labels' must be a non-empty list of class numbers from 1")
    split_of: dict[int, str] = {}
    if (root / "setid.mat").is_file():
        sets = _loadmat(root / "setid.mat", ("trnid", "valid", "tstid"))
        for key, name in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
            for i in sets[key].ravel():
                split_of[int(i)] = name
    listing = _list(root / "jpg", base)
    present = {Path(rel).name: (rel, path) for rel, path in listing.files}
    items, rejected = [], list(listing.rejected)
    listed = set()
    for i, lab in enumerate(labels, start=1):
        name = f"image_{i:05d}.jpg"
        listed.add(name)
        if name not in present:
            rejected.append(((root / "jpg" / name).relative_to(base).as_posix(),
                             "listed in imagelabels.mat but missing from jpg/"))
            continue
        rel, path = present[name]
        items.append(Item(rel, str(path), lab - 1, split_of.get(i, "all" if not split_of else "unsplit")))
    ignored = list(listing.ignored) + [(rel, "not listed in imagelabels.mat")
                                       for name, (rel, _p) in sorted(present.items()) if name not in listed]
    classes = [f"{k:03d}" for k in range(1, max(labels) + 1)]
    return Source("oxford102", root, classes, items, rejected, ignored)


def _oxford17(root: Path, base: Path) -> Source:
    listing = _list(root / "jpg", base)
    items, ignored = [], list(listing.ignored)
    for rel, path in listing.files:
        m = re.fullmatch(r"image_(\d{4})\.jpg", Path(rel).name)
        index = int(m.group(1)) if m else 0
        if not 1 <= index <= 80 * len(OXFORD17_CLASSES):
            ignored.append((rel, "not one of image_0001.jpg .. image_1360.jpg of the Oxford-17 layout"))
            continue
        items.append(Item(rel, str(path), (index - 1) // 80))
    return Source("oxford17", root, list(OXFORD17_CLASSES), items, list(listing.rejected), ignored)


def _folders(root: Path, base: Path) -> Source:
    classes, items = [], []
    listing = _Listing()
    for f in sorted(p for p in root.iterdir() if not p.is_dir()):
        rel = f.relative_to(base).as_posix()
        if not _visible(f.name):
            listing.ignored.append((rel, "hidden file or folder"))
        elif _is_image_name(f.name):
            listing.rejected.append((rel, "image beside the class folders, not inside one (move it into one)"))
        else:
            listing.ignored.append((rel, "not an image file extension"))
    for sub in _subdirs(root):
        sub_listing = _list(sub, base)
        listing.rejected += sub_listing.rejected
        listing.ignored += sub_listing.ignored
        if not sub_listing.files:
            listing.ignored.append((sub.relative_to(base).as_posix(), "class folder without images"))
            continue
        classes.append(sub.name)
        items += [Item(rel, str(path), len(classes) - 1) for rel, path in sub_listing.files]
    return Source("folders", root, classes, items, listing.rejected, listing.ignored)


def _flat(root: Path, base: Path) -> Source:
    listing = _list(root, base)
    items = [Item(rel, str(path), 0) for rel, path in listing.files]
    return Source("flat", root, [root.name or "images"], items, listing.rejected, listing.ignored)


def discover(root: Path, layout: str = "auto") -> Source:
    """List every candidate image of the folder `root` with its label, following `layout` (or detecting it)."""
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    base = root
    if not root.is_dir():
        raise UserError(f"{root}: not a folder or a .tar/.tar.gz/.tgz/.zip archive")
    root = _unwrap(root)
    kind = layout
    if layout == "auto":
        kind = _oxford_kind(root) or ("folders" if any(_list(s, base).files for s in _subdirs(root)) else "flat")
    if kind in ("oxford102", "oxford17") and not (root / "jpg").is_dir():
        raise UserError(f"{root}: --layout {kind} expects a jpg/ folder")
    if kind == "oxford102" and not (root / "imagelabels.mat").is_file():
        raise UserError(f"{root}: --layout oxford102 expects imagelabels.mat beside jpg/")
    source = {"oxford102": _oxford102, "oxford17": _oxford17, "folders": _folders, "flat": _flat}[kind](root, base)
    if not source.items:
        raise UserError(f"{base}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files)")
    return source
