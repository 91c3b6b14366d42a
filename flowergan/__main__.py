"""`python -m flowergan`: the same command as the `flowergan` console script (torchrun launches it this way)."""

from flowergan.cli import main

if __name__ == "__main__":
    main()
