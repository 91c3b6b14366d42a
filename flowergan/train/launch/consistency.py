"""Proof that DDP kept the ranks in step: every rank hashes its own G, D and G_ema parameters at each checkpoint.

It reads the plain modules the loop hands to `on_checkpoint`, so it needs no hook on the forward pass and works
the same under torch.compile. Ranks that differ stop the run: a checkpoint would hold only rank 0's version.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from flowergan.errors import UserError
from flowergan.train import distributed as dist

CHECKED = ("G", "D", "G_ema")  # whichever of them the run keeps


def params_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over parameter names and exact bytes (BatchNorm buffers differ per rank by design: excluded)."""
    h = hashlib.sha256()
    for name, p in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def nets_digest(nets: Mapping[str, nn.Module]) -> str:
    """This rank's hash of the parameters of G, D and G_ema (when kept)."""
    return params_digest((f"{tag}.{n}", p) for tag in CHECKED if tag in nets
                         for n, p in nets[tag].named_parameters())


def check_ranks_agree(step: int, path: Path | None, nets: Mapping[str, nn.Module], device: torch.device
                      ) -> list[str]:
    """Every rank's digest (a collective: all ranks call it); raises UserError on every rank when they differ,
    after rank 0 removed the checkpoint it just wrote, so a restart resumes from the last agreeing one."""
    digests = dist.all_gather_text(nets_digest(nets), device)
    if len(set(digests)) > 1:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        groups = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise UserError(f"G/D/G_ema parameters differ across ranks at step {step} ({groups}); DDP lost sync (a rank "
                        "changed its weights outside the optimizer step, or faulty hardware), so the run stops; "
                        f"checkpoint {step} was discarded")
    return digests
