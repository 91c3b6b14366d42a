"""SynthFlowers: procedural flowers with K = 6 petal counts x 8 petal hues = 48 known modes (the label).

The project's mode-collapse benchmark (as Stacked MNIST is in the literature): the mode of a generated image can
be read back by an oracle, so a GAN that drops modes shows it. Everything else is continuous nuisance: rotation,
scale, position, petal length/width/taper, centre size and colour, stem bend, leaf, background gradient and
texture. Rendering is vectorised numpy with soft (distance-based, antialiased) edges.
Image i depends only on (seed, i), so any number of worker processes gives the same images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console

SYNTH_VERSION = 1
PETAL_COUNTS = (3, 4, 5, 6, 7, 8)
# (name, hue in [0, 1), saturation range, value range). White is the achromatic mode.
HUES = (
    ("red", 0.995, (0.80, 0.95), (0.80, 0.95)),
    ("orange", 0.075, (0.85, 1.00), (0.92, 1.00)),
    ("yellow", 0.150, (0.80, 0.95), (0.95, 1.00)),
    ("cyan", 0.500, (0.70, 0.90), (0.85, 0.97)),
    ("blue", 0.625, (0.70, 0.90), (0.85, 1.00)),
    ("violet", 0.760, (0.60, 0.80), (0.80, 0.95)),
    ("pink", 0.910, (0.40, 0.55), (0.95, 1.00)),
    ("white", 0.000, (0.00, 0.06), (0.96, 1.00)),
)
NUM_MODES = len(PETAL_COUNTS) * len(HUES)
SUPERSAMPLE = 1  # soft edges already antialias; 2 looks the same at 64 px and costs 4x


def mode_names() -> list[str]:
    """Class names of the 48 modes, index = label: '3petal-red', ..., '8petal-white'."""
    return [f"{n}petal-{h[0]}" for n in PETAL_COUNTS for h in HUES]


def mode_of(petals: int, hue: str) -> int:
    """Label of a (petal count, hue name) pair."""
    return PETAL_COUNTS.index(petals) * len(HUES) + [h[0] for h in HUES].index(hue)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs broadcast, output has a trailing axis of 3."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros(np.broadcast(h, s, v).shape + (3,), np.float32)
    for k, c in enumerate(choices):
        out = np.where((i == k)[..., None], c, out)
    return out


@dataclass
class Params:
    """Per-image parameters of one batch (arrays of length n)."""

    mode: np.ndarray
    n_petals: np.ndarray
    petal_rgb: np.ndarray  # n x 3
    bg_top: np.ndarray  # n x 3
    bg_bottom: np.ndarray
    bg_angle: np.ndarray
    tex: np.ndarray  # n x 3 x 4: amplitude, freq x, freq y, phase of 3 texture waves
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    theta0: np.ndarray
    petal_centre: np.ndarray  # fraction of radius where the petal ellipse is centred
    petal_width: np.ndarray  # fraction of the free arc between petals
    taper: np.ndarray
    centre_r: np.ndarray  # fraction of radius
    centre_rgb: np.ndarray
    stem_bend: np.ndarray
    stem_w: np.ndarray
    stem_rgb: np.ndarray
    leaf_y: np.ndarray  # fraction of the way down the stem
    leaf_side: np.ndarray  # -1 or 1
    leaf_len: np.ndarray
    leaf_angle: np.ndarray


def draw_params(indices: np.ndarray, seed: int) -> Params:
    """Parameters of images `indices` (mode = index mod 48, so every mode is equally common)."""
    rows = []
    for i in indices:
        r = np.random.default_rng([seed, int(i), SYNTH_VERSION])
        mode = int(i) % NUM_MODES
        hue = HUES[mode % len(HUES)]
        rows.append((
            mode, PETAL_COUNTS[mode // len(HUES)],
            (hue[1] + r.uniform(-0.012, 0.012), r.uniform(*hue[2]), r.uniform(*hue[3])),
            (r.uniform(0, 1), r.uniform(0.1, 0.35), r.uniform(0.45, 0.72)),
            (r.uniform(0, 1), r.uniform(0.15, 0.45), r.uniform(0.18, 0.45)),
            r.uniform(-0.6, 0.6),
            np.stack([r.uniform(0.0, 0.03, 3), r.uniform(1, 6, 3), r.uniform(1, 6, 3), r.uniform(0, 2 * np.pi, 3)], 1),
            0.5 + r.uniform(-0.09, 0.09), 0.42 + r.uniform(-0.08, 0.08), r.uniform(0.25, 0.36),
            r.uniform(0, 2 * np.pi), r.uniform(0.52, 0.6), r.uniform(0.55, 0.85), r.uniform(0.0, 0.45),
            r.uniform(0.16, 0.27), (r.uniform(0.06, 0.14), r.uniform(0.6, 1.0), r.uniform(0.35, 0.95)),
            r.uniform(-0.18, 0.18), r.uniform(0.018, 0.03), (r.uniform(0.25, 0.38), r.uniform(0.5, 0.8),
                                                             r.uniform(0.3, 0.55)),
            r.uniform(0.35, 0.7), r.choice([-1.0, 1.0]), r.uniform(0.1, 0.17), r.uniform(0.3, 0.9),
        ))
    cols = list(zip(*rows))
    hsv = lambda k: _hsv_to_rgb(*np.array(cols[k], np.float32).T)  # noqa: E731
    f32 = lambda k: np.array(cols[k], np.float32)  # noqa: E731
    return Params(
        mode=np.array(cols[0], np.int64), n_petals=np.array(cols[1], np.float32), petal_rgb=hsv(2),
        bg_top=hsv(3), bg_bottom=hsv(4), bg_angle=f32(5), tex=np.stack(cols[6]).astype(np.float32),
        cx=f32(7), cy=f32(8), radius=f32(9), theta0=f32(10), petal_centre=f32(11), petal_width=f32(12),
        taper=f32(13), centre_r=f32(14), centre_rgb=hsv(15), stem_bend=f32(16), stem_w=f32(17), stem_rgb=hsv(18),
        leaf_y=f32(19), leaf_side=f32(20), leaf_len=f32(21), leaf_angle=f32(22),
    )


def _cover(d: np.ndarray, px: float) -> np.ndarray:
    """Soft coverage from an (approximate) signed distance d (< 0 inside), one pixel wide edge."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _over(img: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return img + (rgb - img) * alpha[:, None]


def render(p: Params, size: int) -> np.ndarray:
    """Draw a batch: n x size x size x 3 uint8."""
    n = len(p.mode)
    res = size * SUPERSAMPLE
    px = 1.0 / res
    t = (np.arange(res, dtype=np.float32) + 0.5) / res
    y, x = t[None, :, None], t[None, None, :]  # 1 x H x 1 and 1 x 1 x W, broadcast against n x 1 x 1 params
    col = lambda a: a[:, None, None]  # noqa: E731
    rgb = lambda a: a[:, :, None, None]  # noqa: E731  n x 3 -> n x 3 x 1 x 1

    # Background: a linear gradient in a random direction plus low-frequency texture waves.
    ang = col(p.bg_angle)
    g = np.clip((np.sin(ang) * (x - 0.5) + np.cos(ang) * (y - 0.5)) + 0.5, 0, 1)
    img = rgb(p.bg_top) + (rgb(p.bg_bottom) - rgb(p.bg_top)) * g[:, None]
    # sin(fx*x + fy*y + ph) = sin(fx*x + ph) cos(fy*y) + cos(fx*x + ph) sin(fy*y): separable, so only
    # rows and columns go through sin/cos.
    tex = np.zeros((n, res, res), np.float32)
    for k in range(p.tex.shape[1]):
        a, fx, fy, ph = (p.tex[:, k, j][:, None] for j in range(4))
        ax, by = 2 * np.pi * fx * t[None] + ph, 2 * np.pi * fy * t[None]
        tex += a[:, :, None] * (np.cos(by)[:, :, None] * np.sin(ax)[:, None, :] +
                                np.sin(by)[:, :, None] * np.cos(ax)[:, None, :])
    img = np.clip(img + tex[:, None], 0, 1)

    cx, cy, radius = col(p.cx), col(p.cy), col(p.radius)
    # Stem: a quadratic curve from the flower centre to below the bottom edge.
    s = np.clip((y - cy) / (1.05 - cy), 0, 1)
    stem_x = cx + col(p.stem_bend) * s * s
    d_stem = np.where(y > cy, np.abs(x - stem_x) - col(p.stem_w), 1.0)
    img = _over(img, rgb(p.stem_rgb), _cover(d_stem, px))
    # Leaf: an ellipse attached to the stem, pointing up and sideways.
    ly = cy + col(p.leaf_y) * (1.05 - cy)
    lx = cx + col(p.stem_bend) * col(p.leaf_y) ** 2
    la = col(p.leaf_angle) * col(p.leaf_side)
    dx, dy = x - lx, y - ly
    u = dx * np.sin(la) - dy * np.cos(la)  # along the leaf
    v = dx * np.cos(la) + dy * np.sin(la)
    half = col(p.leaf_len) / 2
    e = np.sqrt(((u - half) / half) ** 2 + (v / (0.35 * half)) ** 2)
    leaf_rgb = np.clip(p.stem_rgb * 1.25, 0, 1)
    img = _over(img, rgb(leaf_rgb), _cover((e - 1) * 0.35 * half, px))

    # Petals: n ellipses around the centre; each pixel looks only at its nearest petal axis.
    dx, dy = x - cx, y - cy
    r = np.sqrt(dx * dx + dy * dy) + 1e-6
    phi = np.arctan2(dy, dx) - col(p.theta0)
    sector = 2 * np.pi / col(p.n_petals)
    rel = np.mod(phi + sector / 2, sector) - sector / 2
    pu, pv = r * np.cos(rel), r * np.sin(rel)
    c = col(p.petal_centre) * radius
    a = radius - c
    b = np.minimum(col(p.petal_width) * np.sin(sector / 2) * c, 1.1 * a)
    along = np.clip((pu - c) / a, -1, 1)
    b_local = b * (1 - col(p.taper) * np.clip(along, 0, 1) ** 2)  # narrower towards the tip
    e = np.sqrt(((pu - c) / a) ** 2 + (pv / b_local) ** 2)
    d_petal = (e - 1) * np.minimum(a, b_local)
    cover = _cover(d_petal, px)
    shade = 0.72 + 0.28 * np.clip(r / radius, 0, 1)  # lighter towards the tips
    vein = 1 - 0.18 * np.exp(-(pv / (0.18 * b_local)) ** 2) * (pu > c - a)
    edge = np.where(d_petal > -1.5 * px * SUPERSAMPLE, 0.72, 1.0)  # a darker rim separates petals
    petal = rgb(p.petal_rgb) * (shade * vein * edge)[:, None]
    img = img + (petal - img) * cover[:, None]

    # Centre disk with a seed texture.
    rc = col(p.centre_r) * radius
    seeds = 0.85 + 0.15 * np.sin(r * 9 / rc) * np.cos(phi * 7)
    centre = rgb(p.centre_rgb) * (seeds * (0.8 + 0.2 * np.clip(1 - r / rc, 0, 1)))[:, None]
    img = img + (centre - img) * _cover(r - rc, px)[:, None]

    # Box-downsample the supersampled picture: the final antialiasing step.
    img = img.reshape(n, 3, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(3, 5))
    return np.clip(np.rint(img.transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)


def generate(indices: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and mode labels for `indices` (n x size x size x 3 uint8, n int64)."""
    p = draw_params(np.asarray(indices), seed)
    return render(p, size), p.mode


def _chunk(task: tuple[int, int, int, int]) -> list[tuple[int, int, bytes]]:
    """Worker: render and PNG-encode images start..stop-1 -> [(index, mode, png bytes)]."""
    from flowergan.data.png import encode_png

    start, stop, size, seed = task
    images, modes = generate(np.arange(start, stop), size, seed)
    return [(start + k, int(modes[k]), encode_png(images[k])) for k in range(stop - start)]


def write_synthflowers(out: str | Path, *, n: int, size: int = 64, seed: int = 0, workers: int = 1,
                       shard_size: int = 0, progress: bool = True, force: bool = False,
                       console: Console | None = None) -> dict:
    """Generate `n` SynthFlowers and write them as shards + manifest into `out`; return the manifest."""
    # Imported here so the drawing functions (which the eval oracle uses) need nothing but numpy.
    from rich.console import Console

    from flowergan.data.ingest.images import ImageOptions
    from flowergan.data.ingest.sharder import Staging, finish, parallel_map
    from flowergan.errors import UserError
    from flowergan.progress import progress_bar

    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    if not 16 <= size <= 1024:
        raise UserError(f"--size {size}: choose 16..1024 (64 and 128 are the model resolutions)")
    console = console or Console()
    t0 = time.perf_counter()
    out = Path(out)
    names = mode_names()
    step = 64
    tasks = [(s, min(s + step, n), size, seed) for s in range(0, n, step)]
    staging = Staging.open(out, force)
    try:
        samples = []
        with progress_bar(progress) as bar:
            task = bar.add_task("synth", total=n)
            for chunk in parallel_map(_chunk, tasks, workers, chunksize=1):
                for index, mode, data in chunk:
                    meta = {"src": f"synthflowers/{seed}/{index}", "class": names[mode], "split": "all",
                            "mode": mode}
                    samples.append({"data": data, "label": mode, "meta": meta})
                bar.advance(task, len(chunk))
        source = {"generator": "synthflowers", "version": SYNTH_VERSION, "seed": seed, "n": n, "modes": NUM_MODES,
                  "petal_counts": list(PETAL_COUNTS), "hues": [h[0] for h in HUES]}
        return finish(staging, console, t0, samples=samples, classes=names, kind="synthflowers",
                      name="synthflowers", image=ImageOptions(size=size), shard_size=shard_size, seed=seed,
                      source=source)
    finally:
        staging.close()


def mode_grid(size: int = 64, seed: int = 0, per_mode: int = 1, pad: int = 2) -> np.ndarray:
    """A picture of every mode: one row per petal count, one column per hue (per_mode examples side by side)."""
    rows, cols = len(PETAL_COUNTS), len(HUES) * per_mode
    modes = np.array([r * len(HUES) + c // per_mode for r in range(rows) for c in range(cols)])
    # index = mode + 48 * k picks the k-th example of a mode (labels are index mod 48)
    ex = np.array([c % per_mode for r in range(rows) for c in range(cols)])
    images, _ = generate(modes + NUM_MODES * ex, size, seed)
    step = size + pad
    grid = np.full((rows * step + pad, cols * step + pad, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[pad + r * step:pad + r * step + size, pad + c * step:pad + c * step + size] = img
    return grid


def save_mode_grid(path: str | Path, size: int = 64, seed: int = 0) -> None:
    """Write `mode_grid` with hue names on top and petal counts on the left as a PNG (the README picture)."""
    from PIL import Image, ImageDraw

    grid = Image.fromarray(mode_grid(size, seed))
    left, top, step = 64, 18, size + 2
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    for c, hue in enumerate(HUES):
        draw.text((left + 2 + c * step + size // 2 - 3 * len(hue[0]), 3), hue[0], fill="black")
    for r, n in enumerate(PETAL_COUNTS):
        draw.text((6, top + 2 + r * step + size // 2 - 6), f"{n} petals", fill="black")
    canvas.save(path, optimize=True)
