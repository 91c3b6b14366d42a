"""flowergan_eval: FID/KID/IS, precision/recall, mode collapse and latent reports from checkpoints alone."""

__version__ = "0.1.0"
