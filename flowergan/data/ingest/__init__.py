"""Ingest: any image source (folders, archives, Oxford layouts, downloads, SynthFlowers) -> checked shards + manifest.

Used by the `flowergan data` commands; nothing here is needed to train from existing shards.
"""
