"""Fixtures several test modules share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits badly on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """256 SynthFlowers at 64 px in 8 shards, made by the real CLI (each rank reads its own shards).

    Modules that need other shards (the data stream tests' 16 px set) define their own `shards`.
    """
    out = tmp_path_factory.mktemp("synth") / "synth64"
    subprocess.run([str(Path(sys.executable).parent / "flowergan"), "data", "synth", "--out", str(out), "--n", "256",
                    "--size", "64", "--seed", "0", "--shard-size", "32", "--workers", "1", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    return out
