"""A minimal streaming tar reader for the shards: ustar, pax and GNU long names, regular files only.

Python's tarfile (which `wds.tarfile_samples` uses) spends most of its time parsing member headers, three per
sample; this reader does the same job with one slice per header (`benchmarks/loader.py` times both on the same
shards; docs/benchmarks.md has the figures). Shards are written with webdataset's TarWriter; `shard_reader` opens
them (webdataset.gopen) and calls this.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

_BLOCK = 512
_ZERO_BLOCK = b"\x00" * _BLOCK


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class TarFormatError(ValueError):
    """The byte stream is not a well-formed tar archive."""


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\x00 ").lstrip(b" ")
    if not field:
        return 0
    if field[0] & 0x80:  # GNU base-256 for very large sizes
        return int.from_bytes(field[1:], "big")
    return int(field, 8)


class _Buffered:
    """Reads a stream in large chunks and hands out exact slices (one read call per 4 MB, not three per member)."""

    def __init__(self, f: Readable, chunk: int = 4 << 20):
        self.f, self.chunk = f, chunk
        self.buf, self.pos = b"", 0

    def take(self, n: int) -> bytes:
        """The next n bytes (fewer only at the end of the stream)."""
        while len(self.buf) - self.pos < n:
            more = self.f.read(max(self.chunk, n))
            if not more:
                break
            self.buf = self.buf[self.pos:] + more
            self.pos = 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def exact(self, n: int) -> bytes:
        out = self.take(n)
        if len(out) < n:
            raise TarFormatError(f"unexpected end of archive ({len(out)} of {n} bytes)")
        return out


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def iter_members(f: Readable) -> Iterator[tuple[str, bytes]]:
    """Yield (name, data) for each regular file of the tar stream `f`, in order."""
    src = _Buffered(f)
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = src.take(_BLOCK)
        if not header:
            return  # tolerate a missing end-of-archive marker
        if len(header) < _BLOCK:
            raise TarFormatError(f"unexpected end of archive ({len(header)} of {_BLOCK} header bytes)")
        if header == _ZERO_BLOCK:
            return
        # No per-header checksum here (summing 512 bytes in Python was a third of the read cost): garbage fails the
        # octal parse below, images carry their own zlib/JPEG checks, and `flowergan data verify` re-hashes shards.
        try:
            size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
        except ValueError:
            raise TarFormatError("bad tar header (size field is not a number)") from None
        kind = header[156:157]
        data = src.exact(size) if size else b""
        pad = -size % _BLOCK
        if pad:
            src.exact(pad)
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind == b"g":
            continue
        if kind == b"L":
            long_name = data.rstrip(b"\x00").decode("utf-8", "replace")
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = header[0:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\x00", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8", "replace") + "/" + name
        long_name, pax = None, {}
        if kind in (b"0", b"\x00", b"7"):
            yield name, data


def split_key(name: str) -> tuple[str, str]:
    """'dir/000123.png' -> ('dir/000123', 'png') (the key ends at the first dot of the file name)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def iter_samples(f: Readable) -> Iterator[dict[str, bytes | str]]:
    """Group consecutive members with the same key into WebDataset samples {'__key__': key, ext: data, ...}."""
    sample: dict[str, bytes | str] | None = None
    for name, data in iter_members(f):
        key, ext = split_key(name)
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key}
        sample[ext] = data
    if sample is not None:
        yield sample
