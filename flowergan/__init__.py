"""flowergan: DCGAN flower generation that trains from a laptop to a Kubernetes GPU cluster.

The notebook API: `G = flowergan.load_generator(path)` (an export folder, a checkpoint or a run dir) and
`flowergan.generate(G, n, seed=0)`. Both are imported on first use, so `import flowergan` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "generate", "load_generator"]

if TYPE_CHECKING:
    from flowergan.artifacts import open_generator as load_generator
    from flowergan.generation import generate


def __getattr__(name: str) -> Any:
    # PEP 562: torch is imported when the API is first used, not by `import flowergan` (the CLI's --version).
    if name == "generate":
        from flowergan.generation import generate

        return generate
    if name == "load_generator":  # the API's name for flowergan.artifacts.open_generator
        from flowergan.artifacts import open_generator

        return open_generator
    raise AttributeError(f"module 'flowergan' has no attribute {name!r}")
