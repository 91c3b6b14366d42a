"""Loader: shards -> one rank's deterministic, resumable stream of batches (`stream.build_stream`).

Which samples make each batch is `plan.py`; they arrive through `uncached.py` (read shards as you go) or
`cached.py` (decode once, keep in RAM or on the GPU), read by `shard_reader.py` / `tar_reader.py` and turned into
images by `decode.py` and tensors by `transform.py`.
"""
