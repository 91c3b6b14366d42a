"""Samples of a trained G: `generate` and `iter_samples`, and G's BatchNorm statistics for sampling (no file I/O:
`flowergan.artifacts.open_generator` opens a G from disk).

Sample i depends only on (seed, i) and G, never on the batch size or on n: z is drawn on the CPU from one
generator in blocks of BLOCK rows, and G always runs on exactly one such block in eval mode. Both matter: in
float32 the same z gives images that differ by ~1e-9 between batch shapes (other kernels), which flips a uint8
pixel now and then over thousands of images; a fixed forward shape makes the result bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from flowergan.errors import UserError
from flowergan.visuals import to_uint8

BLOCK = 64  # rows of z per draw and per forward pass; part of what a seed means, so never changes with --batch


def _device_of(G: nn.Module) -> torch.device:
    p = next(G.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def latent_blocks(nz: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless [BLOCK, nz] standard-normal z blocks from one CPU generator (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(BLOCK, nz, generator=g)


def _rebatch(chunks: Iterator[torch.Tensor], batch: int) -> Iterator[torch.Tensor]:
    """The same rows regrouped into tensors of `batch` rows (the last may be smaller)."""
    held: list[torch.Tensor] = []
    count = 0
    for chunk in chunks:
        held.append(chunk)
        count += len(chunk)
        while count >= batch:
            rows = torch.cat(held)
            yield rows[:batch]
            held, count = [rows[batch:]], count - batch
    if count:
        yield torch.cat(held)


Classes = int | str | Sequence[int | str] | torch.Tensor | None


def num_classes_of(G: nn.Module) -> int:
    """How many classes G is conditioned on (`model.num_classes`); 0 for an unconditional G, which takes z only."""
    k = getattr(G, "num_classes", 0)
    return k if isinstance(k, int) else 0


def class_index(G: nn.Module, cls: int | str) -> int:
    """A class of a conditional G as its label: an index, or a name of `G.class_names` (a digit string that is not a
    name is an index). An unknown name or an index out of range is a UserError that lists the allowed ones."""
    k, names = num_classes_of(G), list(getattr(G, "class_names", []) or [])
    if k == 0:
        raise UserError("this generator is unconditional (model.conditional = 'none'): it takes no class")
    if isinstance(cls, str) and cls in names:
        return names.index(cls)
    if isinstance(cls, str) and not cls.strip().isdigit():
        allowed = ", ".join(names) if names else f"indices 0..{k - 1} (this generator has no class names)"
        raise UserError(f"unknown class {cls!r}; allowed: {allowed}")
    i = int(cls)
    if not 0 <= i < k:
        raise UserError(f"class index {i} is outside 0..{k - 1}" + (f" ({', '.join(names)})" if names else ""))
    return i


def class_labels(G: nn.Module, n: int, classes: Classes = None) -> torch.Tensor | None:
    """The label of each of n samples: None for an unconditional G (where `classes` must be None); for a conditional
    one, `classes` is one class for all, one per sample (indices or names of `G.class_names`), or None for every
    class in turn (sample i is class i % K)."""
    k = num_classes_of(G)
    if k == 0:
        if classes is not None:
            raise ValueError("this G is unconditional (model.conditional = 'none'): it takes no classes")
        return None
    if classes is None:
        return torch.arange(n) % k
    if isinstance(classes, str):
        classes = class_index(G, classes)
    elif not isinstance(classes, (int, torch.Tensor)):
        classes = [class_index(G, c) if isinstance(c, str) else int(c) for c in classes]
    y = torch.as_tensor(classes, dtype=torch.int64).reshape(-1).cpu()
    if y.numel() == 1:
        y = y.expand(n)
    if y.numel() != n:
        raise ValueError(f"classes: {y.numel()} labels for {n} samples (give one, or one per sample)")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"classes: labels must lie in 0..{k - 1} (G has {k} classes)")
    return y.clone()


def iter_samples(G: nn.Module, n: int, *, seed: int = 0, batch: int = BLOCK,
                 device: str | torch.device | None = None, classes: Classes = None) -> Iterator[torch.Tensor]:
    """G's first n samples for `seed` as uint8 [b, 3, H, W] CPU batches of `batch` images (the last may be
    smaller); G runs in eval mode in fp32 on BLOCK-sized forward passes, and its mode is restored after.
    A conditional G takes `classes` (see `class_labels`): sample i depends only on (seed, i, its class)."""
    if n < 1 or batch < 1:
        raise ValueError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    nz = getattr(G, "nz", None)
    if not isinstance(nz, int):
        raise TypeError("G needs an integer attribute nz (the length of z), as flowergan.models.Generator has")
    dev = torch.device(device) if device is not None else _device_of(G)
    return _rebatch(_forward_blocks(G, n, nz, seed, dev, class_labels(G, n, classes)), batch)


@torch.no_grad()
def _forward_blocks(G: nn.Module, n: int, nz: int, seed: int, dev: torch.device,
                    y: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    was_training = G.training
    G.eval()
    try:
        blocks = latent_blocks(nz, seed)
        for lo in range(0, n, BLOCK):
            z = next(blocks).to(dev)
            # fp32 without autocast: the samples are the ones a saved PNG and the eval package see.
            with torch.autocast(dev.type, enabled=False):
                if y is None:
                    images = to_uint8(G(z)).cpu()
                else:  # a whole BLOCK of labels (zeros past n): the forward shape stays fixed
                    y_block = torch.zeros(BLOCK, dtype=torch.int64)
                    y_block[: min(BLOCK, n - lo)] = y[lo:lo + BLOCK]
                    images = to_uint8(G(z, y_block.to(dev))).cpu()
            yield images[: n - lo]
    finally:
        G.train(was_training)


BN_SEED, BN_BATCHES = 2**31 - 1, 16  # z for recomputed BatchNorm statistics: fixed, apart from users' seeds


@torch.no_grad()
def recompute_bn_stats(G: nn.Module, *, batches: int = BN_BATCHES, seed: int = BN_SEED) -> nn.Module:
    """Replace G's BatchNorm running statistics by their average over `batches` fixed batches of BLOCK z's
    (standing statistics, Brock et al. 2019); in place, returns G in eval mode.

    Why: the running statistics are momentum averages over G's past weights, and G_ema's are G's copied over,
    which fit neither network well early in training. Recomputed from the network's own batches they match its
    weights, and eval mode keeps samples batch-independent. Deterministic: fixed z, and train-mode BN ignores
    the old statistics, so recomputing twice gives the same numbers.
    """
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    nz = getattr(G, "nz", None)
    if not bns or not isinstance(nz, int):
        return G.eval()
    momenta = [m.momentum for m in bns]
    dev = _device_of(G)
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        G.train()
        blocks = latent_blocks(nz, seed)
        k = num_classes_of(G)
        y = (torch.arange(BLOCK) % k).to(dev) if k else None  # a conditional G: every class alike
        for _ in range(batches):
            z = next(blocks).to(dev)
            with torch.autocast(dev.type, enabled=False):
                if y is None:
                    G(z)
                else:
                    G(z, y)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
    return G.eval()


def plain_batchnorm(G: nn.Module) -> nn.Module:
    """G with each SyncBatchNorm (`cluster.sync_batchnorm`) replaced, in place, by a BatchNorm2d that holds the
    same parameters and statistics. Rank 0 alone samples and recomputes statistics: in train mode a SyncBatchNorm
    would issue collectives that no other rank joins."""
    for name, child in G.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            bn.weight, bn.bias = child.weight, child.bias  # the same tensors: G here is a copy already
            bn.running_mean, bn.running_var = child.running_mean, child.running_var
            bn.num_batches_tracked = child.num_batches_tracked
            setattr(G, name, bn.train(child.training))
        else:
            plain_batchnorm(child)
    return G


def for_sampling(G: nn.Module, g_sample_bn: str) -> nn.Module:
    """G as samples should be drawn (`model.g_sample_bn`): G itself for "eval", or a copy with recomputed
    BatchNorm statistics for "batch" (G, which may be training, is left untouched; the copy's BatchNorm is
    plain, never SyncBatchNorm)."""
    if g_sample_bn == "eval":
        return G
    if g_sample_bn != "batch":
        raise ValueError(f"g_sample_bn must be 'eval' or 'batch', got {g_sample_bn!r}")
    import copy

    return recompute_bn_stats(plain_batchnorm(copy.deepcopy(G)))


def generate(G: nn.Module, n: int, *, seed: int = 0, batch: int = BLOCK,
             device: str | torch.device | None = None, classes: Classes = None) -> torch.Tensor:
    """n samples of G as one uint8 tensor [n, 3, H, W] (RGB); the same images for a seed (and classes, for a
    conditional G: see `class_labels`) on any batch size."""
    return torch.cat(list(iter_samples(G, n, seed=seed, batch=batch, device=device, classes=classes)))
