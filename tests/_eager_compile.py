"""`python tests/_eager_compile.py ARGS` = `flowergan ARGS` with torch.compile's backend set to `eager` (or to
$FLOWERGAN_COMPILE_BACKEND, e.g. `aot_eager`).

torch.compile still wraps G and D in dynamo's OptimizedModule (what hid them from the old forward-pre-hook spy),
traces them and runs the captured graphs; only inductor's code generation, minutes of C++ compiles per net on a
busy CPU, is left out. `aot_eager` also runs AOTAutograd, the part of inductor's path that refuses a double
backward through compiled code (R1). torchrun starts this file in every rank.
"""

import functools
import os

import torch

torch.compile = functools.partial(  # type: ignore[assignment]
    torch.compile, backend=os.environ.get("FLOWERGAN_COMPILE_BACKEND", "eager"))

from flowergan.cli import main  # noqa: E402  (after the patch: the CLI must see it)

if __name__ == "__main__":
    main()
