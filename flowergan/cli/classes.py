"""`flowergan sample --class/--per-class`: which class each image of a conditional G is, from names or indices."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from flowergan.errors import UserError
from flowergan.generation import class_index, iter_samples, num_classes_of


def sample_classes(G: nn.Module, spec: str | None, per_class: int | None, n: int) -> tuple[int, list[int],
                                                                                           list[str]]:
    """(images, the classes asked for, the name of each) for `--class SPEC` and `--per-class K`: n images, or K
    of every class (of each listed one with --class)."""
    if num_classes_of(G) == 0:
        option = "--class" if spec is not None else "--per-class"
        raise UserError(f"{option}: this generator is unconditional (model.conditional = 'none'); drop {option}")
    wanted = [class_index(G, c.strip()) for c in spec.split(",") if c.strip()] if spec is not None else \
        list(range(num_classes_of(G)))
    if not wanted:
        raise UserError("--class: name at least one class")
    names = list(getattr(G, "class_names", []) or [])
    rows = [names[i] if i < len(names) else str(i) for i in wanted]
    return (n if per_class is None else per_class * len(wanted)), wanted, rows


def class_samples(G: nn.Module, n: int, wanted: list[int], per_class: int | None, *, seed: int, batch: int,
                  device: torch.device) -> Iterator[torch.Tensor]:
    """The uint8 batches: n images taking the classes in turn (image i: z_i, class wanted[i % len]); with
    --per-class K, K images of each class from the same z_0..z_K-1, so a column of the grid is one z through every
    class and a class's row is what `--class C --n K` gives."""
    if per_class is None:
        labels = torch.tensor(wanted)[torch.arange(n) % len(wanted)]
        return iter_samples(G, n, seed=seed, batch=batch, device=device, classes=labels)
    return itertools.chain.from_iterable(iter_samples(G, per_class, seed=seed, batch=batch, device=device, classes=c)
                                         for c in wanted)
