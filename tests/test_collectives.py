"""Every collective the training code runs gets its tensors on the training device.

A GPU worker's process group may be NCCL only, and NCCL takes CUDA tensors only: one CPU tensor in a collective
fails the job at its first call. On the CPU the mistake is invisible (the training device *is* the default one),
so the CPU test makes it visible: it runs the real code paths (metric averaging, the finite-loss vote, text
exchange, the resume-point agreement, DDP's state sync and gradient all-reduce) in a real gloo group with torch's
default device set to `meta`. A tensor made without naming the training device then lands on `meta`, exactly as it
lands on the CPU in a GPU worker, and the recorded collectives show it. The GPU tests run the same code in a
process group of the NCCL kind wherever a GPU is lent.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from flowergan.config import ModelConfig
from flowergan.models import build_models
from flowergan.train import distributed as dist

# Every collective the code under test may reach, directly or through torch's own helpers (the object
# collectives call all_gather/broadcast, DDP syncs its state with _broadcast_coalesced).
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "reduce",
               "gather", "scatter", "all_to_all_single", "send", "recv", "barrier", "_broadcast_coalesced",
               "_verify_params_across_processes")


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class Collectives:
    """Records (collective, device) of every tensor handed to a collective; once `device` is set, a tensor on any
    other device fails the test at the call that received it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, torch.device]] = []
        self.device: torch.device | None = None

    def wrap(self, real, name: str):
        @functools.wraps(real)
        def collective(*args, **kwargs):
            for t in _tensors([*args, *kwargs.values()]):
                self.seen.append((name, t.device))
                if self.device is not None and t.device != self.device:
                    raise AssertionError(f"{name} got a tensor on {t.device}, not on the training device {self.device}")
            return real(*args, **kwargs)

        return collective

    def names(self) -> set[str]:
        return {name for name, _ in self.seen}


@pytest.fixture
def collectives(monkeypatch) -> Collectives:
    """torch.distributed's collectives, checked while the test runs."""
    checked = Collectives()
    for module in (tdist, tdist.distributed_c10d):
        for name in COLLECTIVES:
            real = getattr(module, name, None)
            if real is not None:
                monkeypatch.setattr(module, name, checked.wrap(real, name))
    return checked


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(backend: str, device: torch.device | None = None) -> Iterator[None]:
    """A one-process group of `backend` in this process (rank 0 of 1), torn down afterwards."""
    assert not tdist.is_initialized()
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                             device_id=device)
    try:
        yield
    finally:
        tdist.destroy_process_group()


def _checkpoint(run_dir: Path, step: int) -> Path:
    """A complete checkpoint directory as the run dir lists it, in the layout before sha256 records (its files are
    there; nothing to compare them with)."""
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / "state.json").write_text(json.dumps({"step": step}))
    (path / "models.safetensors").write_bytes(b"")
    (path / "optim.pt").write_bytes(b"")
    return path


def _resume_point(restored: str | None, run_dir: Path, device: torch.device) -> str | None:
    from flowergan.train.state.checkpoints import CheckpointManager

    return CheckpointManager(run_dir / "checkpoints").resume_point(device, restored=restored)


def run_every_collective(device: torch.device, run_dir: Path, unplaced: str | None = None,
                         resume: bool = True) -> None:
    """The training code's collectives, each with its expected answer in a one-process group. `unplaced`: where
    torch puts a tensor made without a device while they run (the models are built and moved before, as the
    loop does). `resume=False` leaves out the resume-point agreement (it reads checkpoints: safetensors)."""
    G, _D = build_models(ModelConfig(resolution=16, nz=8, ngf=4, ndf=4))
    G.to(device)
    with torch.device(unplaced) if unplaced else contextlib.nullcontext():
        _collectives(device, run_dir, G, resume)


def _collectives(device: torch.device, run_dir: Path, G: torch.nn.Module, resume: bool) -> None:
    assert dist.mean_across(torch.tensor([2.0, 4.0], device=device)).tolist() == [2.0, 4.0]
    assert dist.all_true(torch.ones((), dtype=torch.bool, device=device))
    assert not dist.all_true(torch.zeros((), dtype=torch.bool, device=device))
    assert dist.all_gather_text("G/D digest", device) == ["G/D digest"]
    assert dist.all_gather_text("", device) == [""]
    assert dist.all_gather_bytes(b"\x00rng\xff", device) == [b"\x00rng\xff"]  # every rank's RNG state travels so
    assert dist.broadcast_text("runs/x/checkpoints/step-00000007", device) == "runs/x/checkpoints/step-00000007"
    assert dist.broadcast_text(None, device) is None
    if resume:  # the resume-point agreement: the run dir's newest checkpoint beats an older restored one ...
        newest = _checkpoint(run_dir, 7)
        assert _resume_point(None, run_dir, device) == str(newest)
        assert _resume_point("/ray/t/step-00000005", run_dir, device) == str(newest)
        # ... and loses to a newer one.
        assert _resume_point("/ray/t/step-00000009", run_dir, device) == "/ray/t/step-00000009"
    # DDP: state sync at construction, buffer sync in forward, gradient all-reduce in backward (the default hook
    # routes the gradient buckets through dist.all_reduce, where they are recorded).
    G_ddp = dist.wrap(G, device)
    G_ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    G_ddp(torch.randn(2, 8, device=device)).mean().backward()
    assert all(p.grad is not None for p in G.parameters())


def test_every_collective_gets_training_device_tensors(one_thread, collectives, tmp_path: Path) -> None:
    device = torch.device("cpu")
    collectives.device = device
    with process_group("gloo"):  # a tensor made without a device lands on meta, not on the training device
        run_every_collective(device, tmp_path / "run", unplaced="meta")
    assert {"all_reduce", "broadcast", "all_gather", "_broadcast_coalesced"} <= collectives.names(), collectives.seen


def test_the_device_check_catches_a_misplaced_tensor(one_thread, collectives) -> None:
    """The harness above can fail: a tensor made without a device reaches the collective on `meta`."""
    collectives.device = torch.device("cpu")
    with process_group("gloo"), torch.device("meta"):
        flag = torch.ones(1)  # the old resume-point vote built its tensor like this
        with pytest.raises(AssertionError, match="all_reduce got a tensor on meta, not on the training device cpu"):
            tdist.all_reduce(flag)


def test_step_of_reads_the_checkpoint_module_names() -> None:
    from flowergan.artifacts import checkpoint as ckpt_io

    assert ckpt_io.step_of(Path("/r/checkpoints") / ckpt_io.step_dir_name(1200)) == 1200
    assert ckpt_io.step_of("s3://bucket/ray/t/step-00000040/") == 40
    assert [ckpt_io.step_of(x) for x in (None, "", "best", "step-", "step-12ab")] == [-1] * 5


def test_a_newer_checkpoint_some_rank_cannot_see_is_not_used(tmp_path: Path) -> None:
    """Rank 0 lists the run dir, every rank must read it: one that cannot makes the vote fail, and the
    restored checkpoint is used instead (or, without one, a one-line error)."""
    from flowergan.errors import UserError

    device = torch.device("cpu")
    newest = _checkpoint(tmp_path, 7)
    real_is_dir = Path.is_dir

    def hidden(self: Path) -> bool:  # the other ranks' view of a run dir that is not on shared storage
        return False if self == newest else real_is_dir(self)

    with process_group("gloo"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "is_dir", hidden)
        mp.setattr("flowergan.train.state.checkpoints.CheckpointManager.newest_intact", lambda self: (newest, None))
        assert _resume_point("/ray/t/step-00000005", tmp_path, device) == "/ray/t/step-00000005"
        with pytest.raises(UserError, match="not visible on every worker"):
            _resume_point(None, tmp_path, device)


# ---- the same in a process group of the NCCL kind ------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["nccl", "cpu:gloo,cuda:nccl"])
def test_collectives_on_the_gpu(backend: str, collectives, tmp_path: Path) -> None:
    """NCCL only (every tensor must be on the GPU) and the mixed backend the Ray GPU workers use."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    collectives.device = device
    # The GPU machines may lack safetensors (checkpoints); resume_point's collectives are the ones above.
    resume = importlib.util.find_spec("safetensors") is not None
    with process_group(backend, device):
        run_every_collective(device, tmp_path / "run", resume=resume)
        torch.cuda.synchronize(device)
    assert {"all_reduce", "broadcast", "all_gather", "_broadcast_coalesced"} <= collectives.names(), collectives.seen
