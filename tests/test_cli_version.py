"""`--version` on both commands, `python -m flowergan`, and shell completion installed and answering through the
completion variable protocol as a real bash calls it (commands, and the allowed values of a typed option)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flowergan

BIN = Path(sys.executable).parent


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def run(argv: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env(**extra))


@pytest.mark.parametrize("argv, name", [
    ([str(BIN / "flowergan"), "--version"], "flowergan"),
    ([sys.executable, "-m", "flowergan", "--version"], "flowergan"),
    ([str(BIN / "flowergan-eval"), "--version"], "flowergan-eval"),
])
def test_version(argv, name):
    from flowergan_eval import __version__ as eval_version

    r = run(argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{name} {eval_version if name == 'flowergan-eval' else flowergan.__version__}"


def test_python_m_flowergan_is_the_same_command():
    r = run([sys.executable, "-m", "flowergan", "--help"])
    assert r.returncode == 0 and "Usage: flowergan " in r.stdout
    assert all(c in r.stdout for c in ("train", "sample", "export", "data", "--install-completion"))


def test_choices_are_listed_in_help_and_enforced():
    r = run([str(BIN / "flowergan"), "data", "shard", "--help"])
    assert "png|jpg|webp" in r.stdout and "center|none" in r.stdout, r.stdout
    r = run([str(BIN / "flowergan"), "data", "shard", "src", "--out", "x", "--crop", "square"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "error: --crop square: 'square' is not one of 'center', 'none'" in r.stderr, r.stderr


def test_literal_choices_match_the_data_modules():
    import typing

    from flowergan.cli import data as data_cli
    from flowergan.data.ingest.fetch import DATASETS
    from flowergan.data.ingest.images import CROPS, FORMATS
    from flowergan.data.ingest.sources import LAYOUTS

    for alias, values in ((data_cli.ImageFormat, FORMATS), (data_cli.Crop, CROPS), (data_cli.Layout, LAYOUTS),
                          (data_cli.DatasetName, tuple(DATASETS))):
        assert typing.get_args(alias) == tuple(values)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("prog", ["flowergan", "flowergan-eval"])
def test_install_completion_for_bash_then_complete(tmp_path, prog):
    """--install-completion writes the script and sources it from ~/.bashrc; bash then completes through the
    _PROG_COMPLETE variable protocol by calling the real console script."""
    home = tmp_path / "home"
    home.mkdir()
    # Shell detection reads the parent processes (pytest here), so the shell is named, as a user may do too.
    r = run([str(BIN / prog), "--install-completion", "bash"], HOME=str(home),
            _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert r.returncode == 0, r.stderr
    script = home / ".bash_completions" / f"{prog}.sh"
    assert f"source '{script}'" in (home / ".bashrc").read_text()
    var = f"_{prog.replace('-', '_').upper()}_COMPLETE"
    assert var in script.read_text()
    fn = f"_{prog.replace('-', '_')}_completion"
    words = "flowergan sample --format ''" if prog == "flowergan" else "flowergan-eval rep"
    cword = 3 if prog == "flowergan" else 1
    shell = (f"source ~/.bashrc; COMP_WORDS=({words}); COMP_CWORD={cword}; {fn} {prog}; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "-c", shell], capture_output=True, text=True, timeout=120,
                       env=env(HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"))
    assert r.returncode == 0, r.stderr
    want = ["grid", "png", "npz"] if prog == "flowergan" else ["report"]
    assert r.stdout.split() == want, (r.stdout, r.stderr)


def test_show_completion_prints_the_script():
    r = run([str(BIN / "flowergan"), "--show-completion", "bash"], _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert r.returncode == 0 and "complete -o default -F _flowergan_completion flowergan" in r.stdout, r.stderr
