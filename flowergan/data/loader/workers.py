"""Loader worker processes for the streams: one thread each, their own seed, errors back as one line."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from flowergan.errors import UserError


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader processes each use one core; the trainer keeps the rest


def _reraise_plainly(items: Iterator) -> Iterator:
    """Pass items through; a UserError from a loader worker comes back as its one line, not a traceback."""
    try:
        yield from items
    except UserError as e:
        text = str(e)
        if "Original Traceback" not in text:
            raise
        last = text.strip().splitlines()[-1]  # "flowergan.errors.UserError: <message>"
        raise UserError(last.split(": ", 1)[1] if ": " in last else last) from None


def run(dataset: torch.utils.data.IterableDataset, workers: int, *, pin_memory: bool = False) -> Iterator:
    """Iterate `dataset` in this process (workers = 0) or in `workers` loader processes (items handed out in turn)."""
    if workers == 0:
        return _reraise_plainly(iter(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory, prefetch_factor=4,
        worker_init_fn=_worker_init, persistent_workers=False,
        # Its own generator: starting workers must not draw from the global RNG, which the training loop's noise
        # uses and a checkpoint restores (else a resumed run drifts by one draw).
        generator=torch.Generator())
    return _reraise_plainly(iter(loader))
