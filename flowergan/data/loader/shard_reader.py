"""Shard I/O: open a shard (or manifest) URL and read its samples; the one path for training, evaluation and verify.

Opening goes through `webdataset.gopen`: local paths, `file://`, `pipe:` commands, and http(s) (curl), plus an fsspec
entry registered here for the object stores (s3://, gs://, memory://, ... via the matching fsspec plugin; gs:// goes
to gcsfs rather than webdataset's `gsutil`, which images rarely have).

Why not webdataset's readers as they are: its `Pipe` checks the command's exit status only if the process has
already ended at a read, and its tar iterators never close the stream, so a `pipe:` or curl command that fails
part-way reads as a shorter shard. Here the end of the data is explicit (`finish`: read the tail, wait for the
command, exit status 0 or a one-line error), and stopping early on purpose kills the command (its status then
means nothing). Tar parsing is `tar_reader`: `benchmarks/loader.py` measures it against `wds.tarfile_samples`.
"""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Generator
from typing import Any

from flowergan.errors import UserError

# fsspec plugins a user installs for each object store (named in the error when it is missing).
_PLUGINS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_registered = False
_MAX_TAIL = 16 << 20  # bytes allowed after a tar's end marker (tar pads to its record size: 10 KB for Python's)


class ShardError(UserError):
    """A shard or manifest could not be read; the message is one line that names the URL."""


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_kw: Any):
    """webdataset.gopen handler for fsspec URLs."""
    import fsspec

    try:
        return fsspec.open(url, mode).open()
    except ImportError as e:
        scheme = url.split("://", 1)[0]
        plugin = _PLUGINS.get(scheme, "the matching fsspec plugin")
        raise ShardError(f"{url}: reading {scheme}:// needs {plugin} (pip install {plugin}; {e})") from None


def _gopen():
    """webdataset.gopen, with the fsspec entry registered (once per process; loader workers inherit it)."""
    global _registered
    try:
        # The module, not the function of the same name that `webdataset/__init__` puts in its place.
        wg = importlib.import_module("webdataset.gopen")
    except ImportError:
        raise ShardError("reading shards needs the webdataset package, which flowergan's install brings: "
                         "pip install 'webdataset>=0.2.86'") from None

    if not _registered:
        import fsspec

        for scheme in fsspec.available_protocols():
            if scheme not in wg.gopen_schemes and scheme not in ("file", "local"):
                wg.gopen_schemes[scheme] = _gopen_fsspec
        if wg.gopen_schemes.get("gs") is wg.gopen_gsutil:
            wg.gopen_schemes["gs"] = _gopen_fsspec
        _registered = True
    return wg


def _describe(status: int) -> str:
    return f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"


class Source:
    """One opened URL: `read(n)`; `finish()` once the reader has what it needs; `close()` always (kills a command)."""

    def __init__(self, url: str, digest=None):
        self.url, self.digest = url, digest
        wg = _gopen()
        try:
            self.f = wg.gopen(url, "rb")  # a missing local file raises FileNotFoundError, as open() does
        except ValueError as e:  # webdataset has no handler for the scheme
            raise ShardError(f"{url}: cannot open ({e})") from None
        self.proc: subprocess.Popen | None = getattr(self.f, "proc", None)  # a webdataset Pipe (pipe:, curl)
        raw = self.f
        if self.proc is not None:
            wg.set_options(self.f, ignore_errors=True)  # its checks race the process; `finish` checks for certain
            raw = self.f.stream
        # read1: what has arrived, up to n bytes, so samples flow as they come instead of once n bytes are in.
        self._read = getattr(raw, "read1", raw.read)

    def read(self, n: int) -> bytes:
        """Up to n bytes (b'' only at the end)."""
        data = self._read(n)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def read_all(self) -> bytes:
        return b"".join(iter(lambda: self.read(1 << 20), b""))

    def command_failed(self, timeout: float | None = 5.0) -> ShardError | None:
        """The error of a command that has ended with a non-zero status (after at most `timeout` s), else None."""
        if self.proc is None:
            return None
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if status == 0:
            return None
        args = self.proc.args
        command = " ".join(str(a) for a in args) if isinstance(args, (list, tuple)) else str(args)
        what = "the command" if self.url.startswith("pipe:") else f"`{command}`"
        return ShardError(f"{self.url}: {what} {_describe(status)}; its output is incomplete")

    def finish(self) -> None:
        """The reader reached the end of its data: read what is left (tar padding), then check the command."""
        left = 0
        while chunk := self.read(1 << 20):
            left += len(chunk)
            if left > _MAX_TAIL:  # a command that never stops talking must not hang the reader
                raise ShardError(f"{self.url}: more than {_MAX_TAIL >> 20} MB after the end of the tar archive")
        error = self.command_failed(timeout=None)
        if error is not None:
            raise error

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # stopped early on purpose: nobody reads the rest, and its status means nothing now
        self.f.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_bytes(url: str) -> bytes:
    """The whole content of `url` (a manifest): OSError when it cannot be opened, ShardError when a command fails."""
    with Source(url) as src:
        data = src.read_all()
        src.finish()
    return data


def iter_samples(url: str, *, digest=None) -> Generator[dict[str, Any], None, None]:
    """WebDataset samples `{'__key__', '__url__', ext: bytes, ...}` of the tar shard at `url`, in order.

    Closing the generator early stops the download. Reading to the end checks the command's exit status and, with
    `digest` (a hashlib object), has fed every byte of the shard to it.
    """
    from flowergan.data.loader.tar_reader import TarFormatError
    from flowergan.data.loader.tar_reader import iter_samples as tar_samples

    try:
        src = Source(url, digest)
    except OSError as e:
        raise ShardError(f"{url}: cannot open shard ({e}); check data.path") from None
    try:
        try:
            for sample in tar_samples(src):
                sample["__url__"] = url
                yield sample
        except TarFormatError as e:
            raise src.command_failed() or ShardError(
                f"{url}: damaged shard ({e}); run `flowergan data verify`") from None
        src.finish()
    finally:
        src.close()
