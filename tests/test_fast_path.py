"""The GPU fast path's choices: data.cache = "auto", channels_last, cuDNN autotuning, no host sync in a step.

The CPU tests check what "auto" means off the GPU (the CPU path stays as it was) and that old job files and
checkpoints with `channels_last = true/false` still load; the gpu tests run the loop's step body under
`torch.cuda.set_sync_debug_mode("error")` and count the syncs of a whole `train()` run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _core import tiny_config

from flowergan.config import ConfigError, DataConfig, TrainConfig, from_dict, load_config
from flowergan.data import build_stream
from flowergan.data.ingest.synth import write_synthflowers
from flowergan.data.loader.cached import CACHE_FRACTION, resolve_cache
from flowergan.data.loader.transform import to_device
from flowergan.errors import UserError
from flowergan.train.gan.compiling import compile_nets, cudnn_autotune, pick_memory_format

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """64 SynthFlowers at 64 px in 8 shards."""
    out = tmp_path_factory.mktemp("synth64-fast")
    write_synthflowers(out, n=64, size=64, seed=0, shard_size=8, progress=False)
    return out


@pytest.mark.parametrize("value,expected", [("auto", "none"), ("none", "none"), ("memory", "memory"),
                                            ("device", "device")])
def test_cache_auto_streams_on_the_cpu_and_explicit_values_stay(value, expected):
    assert resolve_cache(value, 4317, 64, CPU) == expected


def test_cache_auto_on_the_cpu_is_the_old_streaming_path(shards):
    """Same batches as cache = "none", and the streaming path's own check (shards per reader) still applies."""
    auto = build_stream(DataConfig(path=str(shards), workers=0, hflip=0.5), batch_size=8, resolution=64, seed=3)
    none = build_stream(DataConfig(path=str(shards), workers=0, hflip=0.5, cache="none"), batch_size=8,
                        resolution=64, seed=3)
    assert auto.cache == "none" and "cache=none (auto)" in repr(auto)
    for (xa, ya), (xn, yn), _ in zip(auto.iter_from(0), none.iter_from(0), range(3)):
        assert torch.equal(xa, xn) and torch.equal(ya, yn)
    with pytest.raises(UserError, match="8 shards but 3 ranks x 4 loader workers need at least 12"):
        build_stream(DataConfig(path=str(shards), workers=4), batch_size=8, resolution=64, rank=0, world_size=3)


def test_a_cache_too_big_for_memory_is_one_line():
    """The refusal names the field, the size, the limit and what to use instead."""
    from flowergan.data.loader.cached import check_memory

    with pytest.raises(UserError, match=r"data.cache = 'memory': the decoded set needs .* GiB, more than "
                                        rf"{CACHE_FRACTION:.0%} of the .* GiB of free memory; use data.cache = 'none'"):
        check_memory(10**9, 128, "memory", CPU)  # 49 TB


def test_channels_last_auto_is_nhwc_on_cuda_only():
    cuda = torch.device("cuda", 0)  # a device object needs no GPU; pick_memory_format only reads its type
    fmt = {v: (pick_memory_format(TrainConfig(channels_last=v), CPU),
               pick_memory_format(TrainConfig(channels_last=v), cuda)) for v in ("auto", "true", "false")}
    assert fmt["auto"] == (torch.preserve_format, torch.channels_last)
    assert fmt["true"] == (torch.channels_last, torch.channels_last)
    assert fmt["false"] == (torch.preserve_format, torch.preserve_format)


def test_channels_last_booleans_of_old_job_files_and_checkpoints_still_load(tmp_path):
    job = tmp_path / "old.toml"
    job.write_text("[train]\nchannels_last = true\n")
    assert load_config(job).train.channels_last == "true"
    assert from_dict({"train": {"channels_last": False}}).train.channels_last == "false"
    assert load_config(None, ["train.channels_last=auto"]).train.channels_last == "auto"
    with pytest.raises(ConfigError, match="train.channels_last: 'yes' is not allowed; choose one of: auto, true, "
                                          "false"):
        load_config(None, ["train.channels_last=yes"])
    with pytest.raises(ConfigError, match="data.cache: 'gpu' is not allowed; choose one of: auto, none, memory"):
        load_config(None, ["data.cache=gpu"])


def _cgroup(tmp_path: Path, limit: str, usage: int, inactive_file: int) -> tuple[Path, Path, Path]:
    files = (tmp_path / "memory.max", tmp_path / "memory.current", tmp_path / "memory.stat")
    files[0].write_text(f"{limit}\n")
    files[1].write_text(f"{usage}\n")
    files[2].write_text(f"anon {usage - inactive_file}\ninactive_file {inactive_file}\nactive_file 0\n")
    return files


def test_the_memory_cache_is_sized_by_the_pods_cgroup_limit_where_there_is_one(tmp_path, monkeypatch):
    """A pod's memory.max is usually far below the node's MemAvailable, and a cache past it gets the pod
    OOM-killed: the free memory is the limit less what the cgroup holds (reclaimable page cache not counted)."""
    from flowergan.data.loader import cached
    from flowergan.data.loader.cached import _available_memory, check_memory

    gib = 2**30
    node = _available_memory()
    assert node is not None and node > gib
    monkeypatch.setattr(cached, "CGROUP_MEMORY", (_cgroup(tmp_path, str(2 * gib), 3 * gib // 2, gib // 2),))
    assert _available_memory() == gib  # 2 GiB limit - (1.5 GiB used - 0.5 GiB reclaimable page cache)
    assert resolve_cache("memory", 10_000, 128, CPU) == "memory"
    with pytest.raises(UserError, match=r"data.cache = 'memory': the decoded set needs 0.5 GiB, more than 50% of "
                                        r"the 1.0 GiB of free memory"):
        check_memory(11_000, 128, "memory", CPU)  # 0.50 GiB: over half of the pod's 1 GiB, far under the node's
    monkeypatch.setattr(cached, "CGROUP_MEMORY", (_cgroup(tmp_path, "max", gib, 0),))  # no limit: the node's
    assert abs(_available_memory() - node) < gib


def test_cudnn_autotuning_is_on_for_flowergans_steps_only():
    """Not process-wide: a tutorial loop timed beside flowergan's (gpu_check) must run as the tutorial does."""
    cuda = torch.device("cuda", 0)  # setting the flag needs no GPU
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        G, D = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        for device in (CPU, cuda):  # compile_nets never sets it, on or off CUDA
            assert compile_nets(G, D, TrainConfig(), device) == (G, D)
            assert torch.backends.cudnn.benchmark is False
        with cudnn_autotune(cuda):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with cudnn_autotune(CPU):
            assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_to_device_leaves_cpu_tensors_alone():
    t = torch.arange(4)
    assert to_device(t, CPU) is t


# ---- on a GPU -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,expected", [(4317, "device"), (10**9, "none")])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cache_auto_on_cuda_is_the_device_when_the_set_fits(rows, expected):
    """flowers5 (53 MB at 64 px) goes to the GPU; a set bigger than GPU and RAM streams."""
    assert resolve_cache("auto", rows, 64, torch.device("cuda")) == expected


def _loop_body(cfg_train: TrainConfig, shards: Path, batch: int = 16):
    """The loop's objects and one-iteration body, built as loop.py builds them (models, fused Adam, precision,
    compiling.py, the stream with data.cache = "auto", noise, gan_step with the job files' R1 and DiffAugment, EMA,
    on-device accumulators)."""
    import copy

    from flowergan.config import ModelConfig
    from flowergan.models import build_models
    from flowergan.train.gan.augment import make_augment
    from flowergan.train.gan.step import Precision, ema_update, gan_step, resolve_amp

    device = torch.device("cuda")
    torch.manual_seed(0)
    G, D = build_models(ModelConfig(ngf=16, ndf=16))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    memory_format = pick_memory_format(cfg_train, device)
    for m in (G, D, G_ema):
        m.to(device).to(memory_format=memory_format)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    precision = Precision(device, *resolve_amp(cfg_train.amp, device))
    G_train, D_train = compile_nets(G, D, cfg_train, device)
    stream = build_stream(DataConfig(path=str(shards), workers=0, hflip=0.5, color_jitter=0.2), batch_size=batch,
                          resolution=64, seed=0, device=device)
    assert stream.cache == "device"
    batches = stream.iter_from(0)
    augment = make_augment("color,translation")
    acc = torch.zeros(5, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)

    def body(step: int) -> None:
        nonlocal finite
        x, _ = next(batches)
        real = x.to(device, non_blocking=True, memory_format=memory_format)
        z = torch.randn(batch, 100, device=device)
        with cudnn_autotune(device):
            out = gan_step(G_train, D_train, opt_g, opt_d, [real], [z], precision, augment=augment, r1=0.5, D_r1=D)
        ema_update(G_ema, G, min(0.999, (1 + step) / (10 + step)))
        values = torch.stack([out.loss_d, out.loss_g, out.d_real, out.d_fake_before, out.d_fake_after])
        finite &= torch.isfinite(values[:2]).all()
        acc.add_(values)

    return body, acc


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp,channels_last,compile", [("bf16", "auto", False), ("fp16", "auto", False),
                                                       ("off", "false", False), ("bf16", "auto", True)])
def test_no_host_sync_inside_a_step(shards, amp, channels_last, compile):
    """Steps after the first (cuDNN autotuning, lazy optimizer state; CUDA graph recording) never wait for the GPU:
    any synchronizing call raises under sync debug mode "error"."""
    tc = TrainConfig(amp=amp, channels_last=channels_last, compile=compile, compile_mode="reduce-overhead")
    body, acc = _loop_body(tc, shards)
    warm = 4 if compile else 1
    for step in range(warm):
        body(step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(warm, warm + 6):
            body(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(acc).all()  # the one sync, after the steps


def _syncs_of_a_run(run_dir: Path, steps: int, shards: Path, *extra: str) -> int:
    from flowergan.train.loop import train

    # Batch 4: 16 batches per epoch, so neither run reaches an epoch's end (whose logging syncs too).
    cfg = tiny_config(run_dir, f"data.path={shards}", "data.workers=0", "train.device=cuda", f"train.steps={steps}",
                      f"log.every={steps}", f"train.checkpoint_every={steps}", f"log.sample_every={steps}",
                      "train.batch_size=4", "log.tensorboard=false", "train.r1_gamma=1",
                      "train.diffaugment=color,translation", *extra)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(cfg)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in seen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("extra", [(), ("model.conditional=projection", "train.loss=hinge"),
                                   ("model.conditional=concat",)], ids=["default", "projection-hinge", "concat"])
def test_the_whole_loop_syncs_per_log_interval_not_per_step(shards, tmp_path, extra):
    """train() for 4 and for 12 steps with one log/checkpoint/sample interval: the same number of host syncs (a
    conditional run's labels and fake classes included)."""
    short = _syncs_of_a_run(tmp_path / "a", 4, shards, *extra)
    long = _syncs_of_a_run(tmp_path / "b", 12, shards, *extra)
    assert short > 0, "sync debug mode reported nothing: the count below would prove nothing"
    assert long == short, f"{long - short} more host syncs in 8 more steps"

