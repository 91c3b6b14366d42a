"""Config: TOML round trip, precedence, --set parsing, and one-line validation errors that name the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flowergan.config import (
    SECTIONS,
    Config,
    ConfigError,
    describe,
    from_dict,
    load_config,
    parse_override,
    validate,
)
from flowergan.errors import UserError


def _write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(tmp_path: Path, toml: str = "", overrides: tuple[str, ...] = ()) -> str:
    """Load a config that must fail; return the message after checking it is one clear user-facing line."""
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, toml), overrides)
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def _changed_config() -> Config:
    """A config where every section differs from the defaults, with awkward strings and small floats."""
    cfg = Config()
    cfg.data.path = 'données/shards "v2"\\x'
    cfg.data.workers = 0
    cfg.model.resolution, cfg.model.kernel, cfg.model.d_head, cfg.model.spectral_norm = 128, 5, "dense", True
    cfg.optim.lr_d, cfg.optim.fused = 1e-5, "off"
    cfg.train.steps, cfg.train.diffaugment, cfg.train.amp = 123, "color,cutout", "bf16"
    cfg.train.ema_decay, cfg.train.real_label = 0.9999, 1.0
    cfg.log.run_dir, cfg.log.tensorboard = "runs/x y", False
    cfg.eval.every, cfg.eval.metric = 100, "fid"
    cfg.cluster.name, cfg.cluster.workers, cfg.cluster.gpus_per_worker = "flowers", 4, 1.0
    return validate(cfg)


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = _changed_config()
    assert cfg.to_dict() != Config().to_dict()
    back = load_config(_write(tmp_path, cfg.to_toml()))
    assert back.to_dict() == cfg.to_dict()
    assert back == cfg
    # Types survive too (an int stays an int, a float a float).
    for section in SECTIONS:
        for key, value in getattr(back, section).__dict__.items():
            assert type(value) is type(getattr(getattr(cfg, section), key)), f"{section}.{key}"


def test_dict_round_trip_and_defaults_round_trip(tmp_path: Path) -> None:
    cfg = _changed_config()
    assert from_dict(cfg.to_dict()) == cfg
    # Defaults: an empty cluster.name becomes the job file's stem (so a relaunch finds its Ray run).
    back = load_config(_write(tmp_path, Config().to_toml(), "smoke.toml"))
    want = Config().to_dict()
    want["cluster"]["name"] = "smoke"
    assert back.to_dict() == want


def test_precedence_defaults_file_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "[train]\nsteps = 50\nbatch_size = 16\n[model]\nngf = 32\n")
    cfg = load_config(path, ["train.steps=7", "model.spectral_norm=true", "optim.lr_g=1e-4"])
    assert cfg.train.steps == 7  # --set beats the file
    assert cfg.train.batch_size == 16 and cfg.model.ngf == 32  # the file beats the defaults
    assert cfg.model.spectral_norm is True and cfg.optim.lr_g == 1e-4
    assert cfg.model.ndf == Config().model.ndf and cfg.train.seed == 0  # untouched fields keep defaults
    assert load_config(None).to_dict() == Config().to_dict()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("train.steps=100", ("train", "steps", "100")),
        (" train.steps = 100 ", ("train", "steps", " 100 ")),
        ("data.path=s3://b/x?a=b", ("data", "path", "s3://b/x?a=b")),  # '=' inside the value is kept
        ("train.diffaugment=", ("train", "diffaugment", "")),
    ],
)
def test_parse_override(text: str, want: tuple[str, str, str]) -> None:
    assert parse_override(text) == want


@pytest.mark.parametrize("text", ["train.steps", "steps=3", "=3", ""])
def test_parse_override_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(text)
    with pytest.raises(ConfigError) as e:
        load_config(None, [text])
    assert str(e.value).startswith(f"--set {text}:") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("override", "field", "value"),
    [
        ("model.spectral_norm=yes", "spectral_norm", True),
        ("model.spectral_norm=False", "spectral_norm", False),
        ("train.ema=0", "ema", False),
        ("optim.beta1=0", "beta1", 0.0),
        ("train.d_steps=2", "d_steps", 2),
        ("data.path='my shards'", "path", "my shards"),
        ('train.diffaugment="color,translation"', "diffaugment", "color,translation"),
    ],
)
def test_set_values_are_parsed_to_the_field_type(override: str, field: str, value: object) -> None:
    cfg = load_config(None, [override])
    got = getattr(getattr(cfg, override.split(".")[0]), field)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("toml", "overrides", "names"),
    [
        # unknown key / unknown section
        ("[train]\nstepz = 3\n", (), ["train.stepz"]),
        ("[trainn]\nsteps = 3\n", (), ["trainn"]),
        ("", ("train.stepz=3",), ["train.stepz"]),
        ("", ("nosuch.steps=3",), ["nosuch"]),
        # wrong type, in the file and on the command line
        ('[train]\nsteps = "ten"\n', (), ["train.steps", "int"]),
        ("[train]\nsteps = 1.5\n", (), ["train.steps", "int"]),
        ("[model]\nspectral_norm = 1\n", (), ["model.spectral_norm", "bool"]),
        ("[optim]\nlr_g = true\n", (), ["optim.lr_g", "float"]),
        ("[data]\npath = 3\n", (), ["data.path", "str"]),
        ("", ("train.steps=ten",), ["train.steps", "int"]),
        ("", ("model.spectral_norm=maybe",), ["model.spectral_norm", "bool"]),
        ("", ("optim.lr_g=fast",), ["optim.lr_g", "float"]),
        # out of range (inclusive and open lower bounds, upper bounds, non-finite)
        ("[train]\nsteps = 0\n", (), ["train.steps", ">= 1"]),
        ("[data]\nhflip = 1.5\n", (), ["data.hflip", "<= 1.0"]),
        ("", ("optim.lr_g=0",), ["optim.lr_g", "> 0.0"]),
        ("", ("optim.lr_d=nan",), ["optim.lr_d", "finite"]),
        ("", ("model.nz=0",), ["model.nz"]),
        # bad choice
        ("[model]\nresolution = 96\n", (), ["model.resolution", "64", "128"]),
        ("", ("train.amp=fp8",), ["train.amp", "bf16"]),
        ("", ("model.d_head=mlp",), ["model.d_head", "conv", "dense"]),
        # DiffAugment policy
        ('[train]\ndiffaugment = "color,flip"\n', (), ["train.diffaugment", "flip", "translation"]),
        # batch not divisible by workers
        ("[train]\nbatch_size = 10\n[cluster]\nworkers = 4\n", (), ["train.batch_size", "cluster.workers"]),
        # NCCL cannot put two ranks on one GPU: whole GPUs per worker
        ("[cluster]\ngpus_per_worker = 0.5\n", (), ["cluster.gpus_per_worker", "0.5", "whole number"]),
        ("", ("cluster.gpus_per_worker=1.5",), ["cluster.gpus_per_worker", "whole number"]),
        # SyncBatchNorm's backward is not twice differentiable: no R1 with it
        ("", ("cluster.sync_batchnorm=true", "train.r1_gamma=1"), ["cluster.sync_batchnorm", "train.r1_gamma"]),
        # not a table
        ("steps = 3\n", (), ["[steps]"]),
        # invalid TOML names the file
        ("[train\nsteps = 3\n", (), ["job.toml", "TOML"]),
    ],
)
def test_validation_errors_name_the_field(tmp_path: Path, toml: str, overrides: tuple, names: list[str]) -> None:
    msg = _error(tmp_path, toml, overrides)
    for name in names:
        assert name in msg, f"{name!r} not in {msg!r}"


@pytest.mark.parametrize("gpus", ["0", "1", "2.0", "8"])
def test_whole_gpus_per_worker_load(gpus: str) -> None:
    assert load_config(None, [f"cluster.gpus_per_worker={gpus}"]).cluster.gpus_per_worker == float(gpus)


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(e.value) and "\n" not in str(e.value)


def test_from_dict_validates_like_the_loader() -> None:
    with pytest.raises(ConfigError, match=r"^train\.steps"):
        from_dict({"train": {"steps": -1}})
    with pytest.raises(ConfigError, match="unknown key model.depth"):
        from_dict({"model": {"depth": 3}})


def test_validate_checks_fields_set_in_code() -> None:
    cfg = Config()
    cfg.train.batch_size = 6
    cfg.cluster.workers = 4
    with pytest.raises(ConfigError, match="train.batch_size"):
        validate(cfg)
    cfg = dataclasses.replace(Config())
    cfg.train.diffaugment = "color, cutout"  # spaces around names are fine
    assert validate(cfg) is cfg


def test_every_field_is_documented() -> None:
    text = describe()
    for section in SECTIONS:
        assert f"[{section}]" in text
        for f in dataclasses.fields(getattr(Config(), section)):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help"
            assert f"  {f.name} = " in text
