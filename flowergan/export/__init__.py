"""A generator people can take away: `flowergan export` writes a self-contained folder (G only, no D, no optimizer).

  model.safetensors  G's state dict with plain keys (G_ema's weights unless --raw)
  config.json        the whole [model] section, z and output conventions, provenance
  README.md          a model card whose YAML front matter the Hugging Face Hub reads
  generator.pt2      on request: torch.export program, dynamic batch (graph JSON, raw weights, a tensors-only
                     example input)
  generator.onnx     on request: ONNX (opset of torch's dynamo exporter), dynamic batch
"""

from flowergan.export.folder import FORMATS, export, exported_weights, is_export, load_export

__all__ = ["FORMATS", "export", "exported_weights", "is_export", "load_export"]
