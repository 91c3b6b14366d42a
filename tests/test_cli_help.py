"""`--help` of every command of both CLIs as a user sees it (typer's CliRunner renders the real rich help): flags
show no value, options that take one show what it looks like, defaults agree, help texts say the right thing, and
`flowergan` lists its commands in the order a run uses them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer.main
from flowergan_eval.cli import app as eval_app
from typer.testing import CliRunner

from flowergan.cli import _register
from flowergan.cli import app as flowergan_app

_register()
APPS = {"flowergan": flowergan_app, "flowergan-eval": eval_app}


def commands(prog: str) -> Iterator[tuple[list[str], object]]:
    """(argv to the command, its click command) for every command and group of `prog`, hidden ones included."""
    root = typer.main.get_command(APPS[prog])
    todo: list[tuple[list[str], object]] = [([], root)]
    while todo:
        path, cmd = todo.pop()
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            todo.append(([*path, name], sub))


ALL = [(prog, path) for prog in APPS for path, _ in commands(prog)]


def render(prog: str, path: list[str]) -> str:
    r = CliRunner().invoke(APPS[prog], [*path, "--help"], env={"COLUMNS": "160", "TERMINAL_WIDTH": "160"})
    assert r.exit_code == 0, r.output
    return r.output


def option_row(help_text: str, option: str) -> str:
    """The rendered row of `option` (its first line in the options panel)."""
    rows = [line for line in help_text.splitlines() if re.search(rf"│\s*\*?\s*{re.escape(option)}\b", line)]
    assert rows, f"{option} not in:\n{help_text}"
    return rows[0]


@pytest.mark.parametrize("prog, path", ALL, ids=[" ".join([p, *a]) for p, a in ALL])
def test_flags_show_no_value_and_no_type_placeholder_is_a_python_type(prog, path):
    text = render(prog, path)
    cmd = dict((tuple(p), c) for p, c in commands(prog))[tuple(path)]
    for param in cmd.params:
        if getattr(param, "is_flag", False) and not param.hidden:
            row = option_row(text, param.opts[0])
            after_names = [w for w in row.strip("│ *").split() if not w.startswith("-")]
            assert not after_names[0].startswith("<"), row  # the help text, not a value's placeholder
    assert "<bool>" not in text and "list[str]" not in text, text


def test_set_shows_what_it_takes():
    for prog, path in (("flowergan", ["train"]), ("flowergan", ["tune"])):
        assert "<KEY=VALUE>" in option_row(render(prog, path), "--set")


def test_export_format_lists_its_choices():
    from flowergan.artifacts.export_folder import FORMATS

    row = option_row(render("flowergan", ["export"]), "--format")
    assert f"<{'|'.join(FORMATS)}>" in row, row


def test_device_defaults_to_auto_everywhere():
    found = []
    for prog in APPS:
        for path, cmd in commands(prog):
            for param in getattr(cmd, "params", []):
                if "--device" in param.opts:
                    found.append((prog, *path))
                    # train's default is None: the config's train.device (auto) decides.
                    assert param.default in ("auto", None), (prog, path, param.default)
    assert ("flowergan", "sample") in found and ("flowergan-eval", "fid") in found


def test_batch_defaults_say_why_they_differ():
    sample = {p.name: p for p in dict((tuple(a), c) for a, c in commands("flowergan"))[("sample",)].params}
    fid = {p.name: p for p in dict((tuple(a), c) for a, c in commands("flowergan-eval"))[("fid",)].params}
    assert (sample["batch"].default, fid["batch"].default) == (256, 64)
    assert "flowergan-eval" in sample["batch"].help and "extractor" in fid["batch"].help


def test_metric_commands_are_hyphenated_and_old_names_still_run():
    text = render("flowergan-eval", [])
    listed = re.findall(r"│ (\S+)\s", text.split("Commands")[1])
    assert "synth-fd" in listed and "effnet-fd" in listed, listed
    assert not [name for name in listed if "_" in name], listed
    for old in ("synth_fd", "effnet_fd"):  # hidden aliases: scripts written before the rename keep working
        assert "Fréchet" in render("flowergan-eval", [old])


def test_help_texts_fit_their_command():
    cmds = dict(((prog, *path), cmd) for prog in APPS for path, cmd in commands(prog))

    def help_of(key, name):
        return next(p.help for p in cmds[key].params if p.name == name)

    assert "fid" not in help_of(("flowergan-eval", "modes"), "n") and "modes" in help_of(("flowergan-eval", "modes"),
                                                                                          "n")
    assert "fid" not in help_of(("flowergan-eval", "latent"), "n")
    assert "latent" not in help_of(("flowergan-eval", "oracle", "train"), "seed")
    assert "compare" not in help_of(("flowergan-eval", "oracle", "train"), "data")


def test_commands_are_listed_in_workflow_order():
    text = render("flowergan", [])
    listed = re.findall(r"│ (\w+)\s", text.split("Commands")[1])
    order = ["data", "train", "sample", "export", "tune", "config"]
    assert [c for c in listed if c in order] == order, listed
    assert set(listed) == {name for (prog, *path) in [(p, *a) for p, a in ALL if p == "flowergan"] if len(path) == 1
                           for name in path}
