"""What the training loop needs from a data stream, as a Protocol (the loop never asks `hasattr`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

Batch = tuple[torch.Tensor, torch.Tensor]  # images [B, 3, H, W] in [-1, 1], labels [B]


@runtime_checkable
class BatchStream(Protocol):
    """A deterministic, resumable stream of equal-sized batches for one rank."""

    @property
    def num_samples(self) -> int:
        """Images in the whole data set (all ranks): converts `train.epochs` to steps."""
        ...

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch; the same on every rank, so DDP never waits on a short rank."""
        ...

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        """The stream from global batch `batch_index` on: the same batches a fresh iteration would reach there."""
        ...


@runtime_checkable
class LabelledStream(BatchStream, Protocol):
    """A stream whose labels have names: what a class-conditional model trains on (`model.conditional`)."""

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        ...

    @property
    def class_counts(self) -> list[int]:
        """Images per class in label order (the data's class frequencies)."""
        ...
