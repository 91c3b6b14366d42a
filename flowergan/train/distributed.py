"""The collectives and the process group: everything that knows about more than one process, in one place (no
Ray and no checkpoints here: any launcher works).

Ray Train builds the process group itself; torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT) gets one from `init_from_env`.

Every collective takes its tensors on the training device. A GPU worker's process group may be NCCL only, and
NCCL takes CUDA tensors only: a CPU tensor there fails at the first call. Text is exchanged as bytes in device
tensors, not with the `*_object` collectives, so nothing is unpickled and no device is guessed.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from flowergan.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group; 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def launched_by_torchrun() -> bool:
    """Whether a torchrun-style launcher set this process's rank (and no process group exists yet)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and not is_distributed()


def init_from_env(train_device: str, timeout_s: float) -> torch.device:
    """The process group of a torchrun-style launch, from its environment (the `env://` default): NCCL on
    CUDA with LOCAL_RANK as this rank's GPU, gloo on the CPU. Returns this rank's training device."""
    want_cuda = train_device == "cuda" or (train_device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but this process sees no CUDA GPU")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    timeout = timedelta(seconds=timeout_s)
    if want_cuda:
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return device


def shutdown() -> None:
    """Tear down a process group this process created (torchrun), so the run exits cleanly."""
    if is_distributed():
        dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device, sync_batchnorm: bool = False,
         broadcast_buffers: bool = True) -> nn.Module:
    """DDP-wrap one network (G and D get separate wrappers); the module itself outside a process group.

    `broadcast_buffers=False` for a network called more than once before one backward (D: fakes, then reals):
    DDP would copy rank 0's BatchNorm statistics into it in place at the second call, over tensors the first
    call saved for its backward (torch 2.11 then fails the backward; found running the suite under it).
    """
    if not is_distributed():
        return module
    if sync_batchnorm:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=broadcast_buffers)


def all_true(flag: torch.Tensor) -> bool:
    """True when `flag` (a bool tensor on the training device) is true on every rank; one host sync."""
    flag = flag.to(torch.int32)
    if is_distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor of logged scalars (on the training device) over ranks (at log intervals only)."""
    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size()
    return values


def _encode(text: str, device: torch.device) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)


def _decode(data: torch.Tensor) -> str:
    return bytes(data.tolist()).decode()


def broadcast_text(text: str | None, device: torch.device) -> str | None:
    """Rank 0's `text` (or None) on every rank; the other ranks' argument is ignored."""
    if not is_distributed():
        return text
    size = torch.tensor([-1 if text is None else len(text.encode())], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    n = int(size.item())
    if n < 0:
        return None
    data = _encode(text or "", device) if rank() == 0 else torch.empty(n, dtype=torch.uint8, device=device)
    if n:
        dist.broadcast(data, src=0)
    return _decode(data)


def all_gather_text(text: str, device: torch.device) -> list[str]:
    """Every rank's `text`, in rank order."""
    return [b.decode() for b in all_gather_bytes(text.encode(), device)]


def all_gather_bytes(payload: bytes, device: torch.device) -> list[bytes]:
    """Every rank's `payload`, in rank order (raw bytes in device tensors: nothing is unpickled)."""
    if not is_distributed():
        return [payload]
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if payload else \
        torch.empty(0, dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(max(lengths), 1), dtype=torch.uint8, device=device)  # all_gather wants equal sizes
    padded[:data.numel()] = data
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return [bytes(g[:n].cpu().numpy().tobytes()) for g, n in zip(gathered, lengths)]
