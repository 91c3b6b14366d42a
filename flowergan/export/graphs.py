"""G as a graph other runtimes load: torch.export's .pt2 and ONNX, both with a dynamic batch dimension."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowergan.errors import UserError

MAX_BATCH = 65536  # torch.export wants a bound for a dynamic dimension; far above any forward pass


def _conditional(G: nn.Module) -> bool:
    return int(getattr(G, "num_classes", 0) or 0) > 0


def _example(G: nn.Module) -> tuple[torch.Tensor, ...]:
    # Batch 2, not 1: torch.export specialises a dimension of size 1 to a constant.
    z = torch.randn(2, int(getattr(G, "nz", 100)))
    return (z, torch.zeros(2, dtype=torch.int64)) if _conditional(G) else (z,)  # a conditional G takes (z, y)


def _dynamic_batch(G: nn.Module) -> tuple[dict[int, torch.export.Dim], ...]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return ({0: batch}, {0: batch}) if _conditional(G) else ({0: batch},)


def write_pt2(G: nn.Module, path: Path) -> None:
    """torch.export program of G in eval mode (z [batch, nz], and y [batch] int64 for a conditional G -> images
    [batch, 3, R, R]). The archive holds the graph as JSON, the weights as raw bytes and torch's example input as a
    tensors-only torch.save."""
    program = torch.export.export(G.eval(), _example(G), dynamic_shapes=_dynamic_batch(G))
    torch.export.save(program, str(path))


def write_onnx(G: nn.Module, path: Path) -> None:
    """ONNX graph of G in eval mode (inputs `z`, and `y` for a conditional G; output `images`), weights inside the
    one file."""
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it; the legacy TorchScript one is deprecated)
    except ImportError:
        raise UserError("--format onnx needs the onnx packages: pip install 'flowergan[export]'") from None
    inputs = ["z", "y"] if _conditional(G) else ["z"]
    torch.onnx.export(G.eval(), _example(G), str(path), dynamo=True, input_names=inputs, output_names=["images"],
                      dynamic_shapes=_dynamic_batch(G), external_data=False, verbose=False)
