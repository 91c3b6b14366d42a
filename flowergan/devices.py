"""Which device to run on, and the plain module under DDP / torch.compile wrappers: one place for both CLIs."""

from __future__ import annotations

import os

import torch
from torch import nn

from flowergan.errors import UserError


def pick_device(name: str | torch.device | None, field: str = "--device") -> torch.device:
    """'auto' (or None): CUDA when present, else CPU. A bare 'cuda' is this process's GPU (LOCAL_RANK under
    torchrun or Ray); asking for CUDA without one is a user error naming `field`."""
    name = str(name or "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{field}: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{field}: {name!r} asked for but no CUDA GPU is visible; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return normalize(dev)


def normalize(device: str | torch.device) -> torch.device:
    """`device` spelt as the tensors on it report theirs, so two spellings of one place compare equal.

    `torch.device("cuda") != torch.device("cuda:0")` although tensors made on the first live on the second (a
    bare "cuda" is the current GPU), and "cpu:0" is "cpu". Devices are normalised where they enter (pick_device,
    build_stream, train, the benchmarks) and compared only after that.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (state_dict keys without prefixes)."""
    while True:
        inner = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else \
            getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            return module
        module = inner
