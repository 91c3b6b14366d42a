"""Latent-space pictures: PCA of z with each sample drawn where it lands, PCA of D's features for real versus
generated images, and linear / spherical interpolation grids (optionally a GIF).

The maths (PCA, lerp, slerp) are pure functions; the plots take arrays and return PNG bytes, so the report
can inline them and the CLI can write them to files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of x onto their first k principal components, and the explained-variance ratios."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    # Fix each component's sign (largest loading positive) so the picture does not flip between runs.
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    var = s**2
    return centred @ vt[:k].T, (var[:k] / var.sum()) if var.sum() > 0 else np.zeros(k)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line between latents a and b at fractions t (shape [T]) -> [T, nz]."""
    t = t[:, None].to(a.dtype)
    return a[None] * (1 - t) + b[None] * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle interpolation (White 2016): keeps the norm a Gaussian latent expects along the path."""
    t = t[:, None].to(a.dtype)
    cos = torch.clamp((a / a.norm()) @ (b / b.norm()), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-6:  # (nearly) parallel: the two paths coincide
        return lerp(a, b, t[:, 0])
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a[None] + (torch.sin(t * omega) / so) * b[None]


def interpolation_latents(nz: int, pairs: int, steps: int, seed: int, mode: str) -> torch.Tensor:
    """[pairs * steps, nz]: for each random pair (z0, z1), `steps` points from z0 to z1 (row-major grid)."""
    if mode not in ("lerp", "slerp"):
        raise ValueError(f"interpolation mode must be lerp or slerp, got {mode!r}")
    g = torch.Generator().manual_seed(seed + 1)  # not the seed of the metric samples: different endpoints
    ends = torch.randn(pairs, 2, nz, generator=g)
    t = torch.linspace(0, 1, steps)
    fn = lerp if mode == "lerp" else slerp
    return torch.cat([fn(ends[i, 0], ends[i, 1], t) for i in range(pairs)])


# ---------------------------------------------------------------- pictures
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def grid_tensor(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 images [N, 3, H, W] as one uint8 grid [3, H', W'] with a 2-px white gap."""
    from torchvision.utils import make_grid

    return make_grid(images, nrow=nrow, padding=2, pad_value=255)


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """uint8 images [N, 3, H, W] as one PNG grid."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid_tensor(images, nrow).permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: Sequence[torch.Tensor], ms_per_frame: int = 120) -> bytes:
    """An endless, back-and-forth GIF of uint8 frames [3, H, W]."""
    from PIL import Image

    pics = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    pics = pics + pics[-2:0:-1]  # ping-pong so the loop has no jump
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()


def latent_pca_png(z: np.ndarray, images: torch.Tensor, max_thumbs: int = 120, zoom: float = 0.4) -> bytes:
    """PCA of the latents with each generated thumbnail drawn at its 2-D position."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    plt = _plt()
    proj, ratio = pca(z, 2)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(proj[:, 0], proj[:, 1], s=4, c="lightgray")
    for i in range(min(max_thumbs, len(proj))):
        thumb = OffsetImage(images[i].permute(1, 2, 0).numpy(), zoom=zoom)
        ax.add_artist(AnnotationBbox(thumb, (proj[i, 0], proj[i, 1]), frameon=False))
    ax.set(title=f"PCA of z (N={len(z)}): samples placed by their latent",
           xlabel=f"PC1 ({ratio[0]:.1%} of variance)", ylabel=f"PC2 ({ratio[1]:.1%} of variance)")
    fig.tight_layout()
    return _png(fig)


def d_features_pca_png(real: np.ndarray, fake: np.ndarray) -> bytes:
    """Joint PCA of D's penultimate features: where real and generated images fall for the critic."""
    plt = _plt()
    proj, ratio = pca(np.concatenate([real, fake]), 2)
    r, f = proj[: len(real)], proj[len(real):]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(r[:, 0], r[:, 1], s=8, alpha=0.6, label=f"real (N={len(real)})")
    ax.scatter(f[:, 0], f[:, 1], s=8, alpha=0.6, label=f"generated (N={len(fake)})")
    ax.set(title="PCA of D's penultimate features", xlabel=f"PC1 ({ratio[0]:.1%})", ylabel=f"PC2 ({ratio[1]:.1%})")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def histogram_png(counts: Sequence[int], names: Sequence[str], title: str, min_count: int) -> bytes:
    """Bar chart of generated samples per mode, with the 'covered' threshold drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, len(counts) * 0.22), 4))
    colors = ["tab:blue" if c >= min_count else "tab:red" for c in counts]
    ax.bar(range(len(counts)), counts, color=colors)
    ax.axhline(min_count, color="gray", ls="--", lw=1, label=f"covered at >= {min_count}")
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set(title=title, ylabel="generated samples")
    ax.legend()
    fig.tight_layout()
    return _png(fig)
