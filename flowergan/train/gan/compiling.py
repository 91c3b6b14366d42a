"""How G and D run on the device: memory format, cuDNN autotuning and the opt-in torch.compile (CUDA graphs too).

The loop calls `pick_memory_format` once for the models and every batch, `compile_nets` once for the modules
the GAN step calls (after any DDP wrapping), and runs every step inside `cudnn_autotune`. Checkpoints never see
what happens here: the loop saves the plain G and D, whose parameters the compiled modules share, so resume is
exact with or without compiling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from flowergan.config import TrainConfig

# torch.compile modes that capture CUDA graphs (replays of the whole kernel sequence of a forward or backward: one
# launch instead of hundreds, the cost that dominates a 64 px DCGAN step on a large GPU).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def pick_memory_format(tc: TrainConfig, device: torch.device) -> torch.memory_format:
    """`train.channels_last`: "true" = NHWC, "false" = NCHW, "auto" = NHWC on CUDA only.

    cuDNN's tensor-core convolutions work in NHWC: NCHW costs a transpose around every convolution. On the CPU
    "auto" keeps NCHW, the layout the CPU benchmarks and the bit-exact resume tests were measured with.
    """
    on = tc.channels_last == "true" or (tc.channels_last == "auto" and device.type == "cuda")
    return torch.channels_last if on else torch.preserve_format


class _StepBoundary(nn.Module):
    """Marks a new training step for CUDA graph trees before G's forward, the first compiled call of every step.

    Replays of a captured graph reuse its output memory; the mark tells PyTorch that the previous step's outputs
    are dead, so the graphs of this step may be replayed over them (the gan step keeps no output across steps: it
    returns fresh tensors computed from them).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return self.net(*args, **kwargs)


def compile_mode(tc: TrainConfig, device: torch.device) -> str:
    """The torch.compile mode used on `device`: CUDA-graph modes run as "default" off CUDA (no graphs there)."""
    if tc.compile_mode in CUDA_GRAPH_MODES and device.type != "cuda":
        return "default"
    return tc.compile_mode


@contextlib.contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on CUDA for what runs inside (the step: forwards and backwards), put back after.

    cuDNN benchmarks its convolution algorithms once per shape and keeps the fastest; the step's shapes never
    change, so that pays from the second step on (it also means runs on a GPU are not bit-reproducible, which
    GPU convolutions' atomic-add backward kernels are not anyway). Scoped, not process-wide: other code in the
    process (gpu_check's tutorial loop, the eval package) runs with the setting it chose.
    """
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def compile_nets(G_train: nn.Module, D_train: nn.Module, tc: TrainConfig,
                 device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The modules the step calls: torch.compile'd ones when `train.compile` (run them in `cudnn_autotune`)."""
    if not tc.compile:
        return G_train, D_train
    mode = compile_mode(tc, device)
    # torch.compile returns an OptimizedModule (an nn.Module), typed as a plain callable.
    G_c = cast(nn.Module, torch.compile(G_train, mode=mode))
    D_c = cast(nn.Module, torch.compile(D_train, mode=mode))
    if mode in CUDA_GRAPH_MODES:
        G_c = _StepBoundary(G_c)
    return G_c, D_c
