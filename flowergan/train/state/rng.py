"""Every random stream the loop draws from (torch, the training GPU's, numpy, Python), as a flat dict of tensors.

Flat tensors, so a rank's state travels between ranks as safetensors bytes (no pickling, no `*_object`
collectives) and is saved with `torch.save` / read with `weights_only=True`.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from flowergan.train import distributed as dist

RngState = dict[str, torch.Tensor]


def capture(device: torch.device | None = None) -> RngState:
    """This process's RNG states; the CUDA one only for the training GPU (a rank owns one device)."""
    state: RngState = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(device)
    _kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # a tuple, not the dict form
    state["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state["numpy.pos_has_gauss"] = torch.tensor([int(pos), int(has_gauss)], dtype=torch.int64)
    state["numpy.gauss"] = torch.tensor(float(gauss), dtype=torch.float64)
    version, internal, gauss_next = random.getstate()
    state["python.version_internal"] = torch.tensor([version, *internal], dtype=torch.int64)
    state["python.gauss_next"] = torch.tensor([gauss_next is not None, gauss_next or 0.0], dtype=torch.float64)
    return state


def restore(state: RngState, device: torch.device | None = None) -> None:
    """Set every RNG from `capture`'s output."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    pos, has_gauss = state["numpy.pos_has_gauss"].tolist()
    np.random.set_state(("MT19937", state["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy.gauss"])))
    version, *internal = state["python.version_internal"].tolist()
    has_next, gauss_next = state["python.gauss_next"].tolist()
    random.setstate((version, tuple(internal), gauss_next if has_next else None))


def from_legacy(old: dict) -> RngState:
    """The nested form checkpoints held before every rank's state was saved (one rank's, as a dict)."""
    n, p = old["numpy"], old["python"]
    state: RngState = {"torch": old["torch"], "numpy.keys": n["keys"],
                       "numpy.pos_has_gauss": torch.tensor([n["pos"], n["has_gauss"]], dtype=torch.int64),
                       "numpy.gauss": torch.tensor(float(n["gauss"]), dtype=torch.float64),
                       "python.version_internal": torch.cat([torch.tensor([p["version"]]), p["internal"]]),
                       "python.gauss_next": torch.tensor([p["gauss_next"] is not None, p["gauss_next"] or 0.0],
                                                         dtype=torch.float64)}
    return state


def reseed(seed: int, rank: int, offset: int = 0) -> None:
    """Derive this rank's noise stream from the run seed (a fresh start, or a resume across world sizes)."""
    torch.manual_seed(seed * 1_000_003 + rank + 1 + offset)


def gather(state: RngState, device: torch.device) -> list[RngState]:
    """Every rank's RNG state, in rank order (one all_gather of bytes on the training device)."""
    return [st_load(b) for b in dist.all_gather_bytes(st_save(state), device)]
