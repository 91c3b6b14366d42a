"""Helpers shared by the data tests: awkward image files, small shard sets, and a loopback HTTP server."""

from __future__ import annotations

import functools
import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, w: int = 80, h: int = 60) -> np.ndarray:
    """A smooth random RGB picture (compresses like a photo, differs per seed)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [127 + 100 * np.sin(xx / r.uniform(4, 12) + r.uniform(0, 6)) * np.cos(yy / r.uniform(4, 12)) for _ in "rgb"]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def bomb_png(side: int = 9500) -> bytes:
    """A ~10 KB file that claims side x side pixels (90 M: over Pillow's 89.5 M decompression-bomb limit)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def make_class_folders(root: Path, per_class: int = 4, classes=("daisy", "rose"), size=(80, 60)) -> list[Path]:
    """root/<class>/<i>.jpg with distinct smooth pictures; returns the files."""
    files = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / name / f"img{i:03d}.jpg"
            p.write_bytes(jpeg_bytes(photo(100 * c + i, *size)))
            files.append(p)
    return files


class RangeServer:
    """A loopback HTTP server for files in a dict, honouring Range; records requests; can drop once mid-file."""

    def __init__(self, files: dict[str, bytes], drop_first_at: int | None = None):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.drop_first_at = drop_first_at
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.drop_first_at is not None:
                    cut, outer.drop_first_at = outer.drop_first_at, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def run_cli(*args: str, cwd: Path | None = None):
    """Run the real `flowergan` console script; return the CompletedProcess."""
    import subprocess
    import sys

    code = "import sys; from flowergan.cli import main; sys.argv[0] = 'flowergan'; main()"
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)
