"""`python tests/_eager_compile.py ARGS` = `flowergan ARGS` with torch.compile's backend set to `eager`.

torch.compile still wraps G and D in dynamo's OptimizedModule (what hid them from the old forward-pre-hook spy),
traces them and runs the captured graphs; only inductor's code generation, minutes of C++ compiles per net on a
busy CPU, is left out. torchrun starts this file in every rank.
"""

import functools

import torch

torch.compile = functools.partial(torch.compile, backend="eager")  # type: ignore[assignment]

from flowergan.cli import main  # noqa: E402  (after the patch: the CLI must see it)

if __name__ == "__main__":
    main()
