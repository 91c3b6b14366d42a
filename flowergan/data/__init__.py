"""Data: sources -> validated WebDataset shards + manifest -> a stream of batches.

Public interface: `build_stream(DataConfig, batch_size=, resolution=, rank=, world_size=, seed=, device=)` and
`read_manifest(path)`. The `flowergan data` commands (shard, synth, fetch, verify) live in flowergan.cli.data.
Imports are lazy so the sharding commands do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowergan.data.loader.protocol import Batch, BatchStream

if TYPE_CHECKING:
    from flowergan.data.format import read_manifest
    from flowergan.data.loader.stream import Stream, build_stream

__all__ = ["Batch", "BatchStream", "Stream", "build_stream", "read_manifest"]


def __getattr__(name: str) -> Any:
    if name == "read_manifest":
        from flowergan.data.format import read_manifest

        return read_manifest
    if name in ("Stream", "build_stream"):
        from flowergan.data.loader import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'flowergan.data' has no attribute {name!r}")
