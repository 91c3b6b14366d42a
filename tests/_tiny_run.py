"""A tiny trained run (64 px, ngf 8, 10 steps on fixed random images) for the export, sample and API tests."""

from __future__ import annotations

from pathlib import Path

from _core import TensorStream, tiny_config


def tiny_run(run_dir: Path, *overrides: str, steps: int = 10) -> Path:
    """Train `steps` steps into `run_dir` (one checkpoint at the end; `overrides` as --set takes them) and return
    the run dir."""
    from flowergan.train.loop import train

    train(tiny_config(run_dir, f"train.steps={steps}", f"train.checkpoint_every={steps}",
                      f"log.sample_every={steps}", *overrides), stream=TensorStream())
    return run_dir


def run_main(capsys, *args: object, prog: str = "flowergan") -> tuple[int, str, str]:
    """`flowergan ARGS` (or `flowergan-eval ARGS` with prog="flowergan-eval") in this process through the console
    script's entry point (its error handling included): (exit code, stdout, stderr). Seconds faster than a
    subprocess, which imports torch again."""
    import sys

    if prog == "flowergan-eval":
        from flowergan_eval.cli import main
    else:
        from flowergan.cli import main

    argv = sys.argv
    sys.argv = [prog, *map(str, args)]
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err
