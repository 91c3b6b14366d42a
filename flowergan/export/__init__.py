"""A generator people can take away: `flowergan export` writes a self-contained folder (G only, no D, no optimizer).
Its format, and reading it back, is flowergan/artifacts/export_folder.py; this package writes it (folder.py), its
model card (card.py) and its graphs (graphs.py)."""

from flowergan.export.folder import export, parse_formats

__all__ = ["export", "parse_formats"]
