"""The model card's "Use" section: how to install and run an export folder with flowergan and without it (ONNX
Runtime for generator.onnx, plain torch for generator.pt2). tests/test_model_card.py runs every Python block of it
in the folder, the ONNX and torch.export ones with flowergan unimportable."""

from __future__ import annotations

from typing import Any

from flowergan.artifacts.export_folder import FILES


def _flowergan(res: int) -> str:
    return f"""### With flowergan

```
pip install -e /path/to/flowergan   # a clone of flowergan's repository: the flowergan, flowergan-eval commands
flowergan sample --ckpt . --n 64 --out grid.png   # run in this folder; --format png|npz for single images
```

```python
import flowergan

G = flowergan.load_generator(".")  # this folder; G in eval mode
images = flowergan.generate(G, 16, seed=0)  # uint8 [16, 3, {res}, {res}], RGB; image i depends only on (seed, i)
```
"""


def _onnx(nz: int, res: int, k: int) -> str:
    feed = '{"z": z, "y": y}' if k else '{"z": z}'
    labels = f"\ny = np.arange(16, dtype=np.int64) % {k}  # the class of each image (## Classes)" if k else ""
    return f"""### Without flowergan: ONNX Runtime (`{FILES['onnx']}`)

```
pip install onnxruntime numpy pillow
```

```python
import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("{FILES['onnx']}")  # run in this folder
z = np.random.default_rng(0).standard_normal((16, {nz})).astype(np.float32){labels}
images = session.run(None, {feed})[0]  # float32 [16, 3, {res}, {res}], RGB in [-1, 1]
pixels = np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)
Image.fromarray(pixels[0].transpose(1, 2, 0)).save("flower-0.png")
```
"""


def _pt2(nz: int, res: int, k: int) -> str:
    y = f", torch.arange(16) % {k}" if k else ""  # a conditional G takes (z, y): y the class of each image
    return f"""### Without flowergan: torch.export (`{FILES['pt2']}`)

```
pip install torch
```

```python
import torch

G = torch.export.load("{FILES['pt2']}").module()  # run in this folder; load only files you trust
with torch.no_grad():
    images = G(torch.randn(16, {nz}, generator=torch.Generator().manual_seed(0)){y})  # [16, 3, {res}, {res}], [-1, 1]
pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
```
"""


def use_section(meta: dict[str, Any]) -> str:
    """How to run this folder: flowergan's API and CLI, and each graph file it holds without flowergan."""
    nz, res, formats = meta["nz"], meta["resolution"], meta["files"]
    k = len(meta.get("classes") or [])  # a class-conditional G's graphs take (z, y)
    parts = ["## Use\n", _flowergan(res)]
    if "onnx" in formats:
        parts.append(_onnx(nz, res, k))
    if "pt2" in formats:
        parts.append(_pt2(nz, res, k))
    missing = [f for f in ("onnx", "pt2") if f not in formats]
    if missing:
        parts.append(f"Without flowergan, other runtimes read the graph files this folder does not hold: "
                     f"`flowergan export --ckpt CHECKPOINT --out DIR --format safetensors,"
                     f"{','.join(missing)}` writes {' and '.join(f'`{FILES[f]}`' for f in missing)}.\n")
    bn = meta.get("batchnorm") or "eval mode: running statistics saved with the weights"
    parts.append(f"Input: z of shape [batch, {nz}], standard normal. Output: RGB images [batch, 3, {res}, {res}] in "
                 f"[-1, 1]; uint8 = round((x + 1) * 127.5), clamped to [0, 255]. BatchNorm: {bn}.\n")
    return "\n".join(parts)
