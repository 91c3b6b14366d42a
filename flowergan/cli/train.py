"""`flowergan train` and `flowergan sample` (being written by the core issue)."""
