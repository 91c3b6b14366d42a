"""Ray Train with a real Ray started in this process (2 CPU workers, gloo): ranks stay identical, checkpoints and
TensorBoard events are written, and a worker killed with SIGKILL mid-run is replaced and resumes from the newest
checkpoint Ray holds, finishing at the target step with a continuous step counter."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from flowergan.config import load_config
from flowergan.models import build_models
from flowergan.train import checkpoint as ckpt_io
from flowergan.train.ray_train import params_digest, run_ray, stored_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent
BATCH = 16  # global: 8 per rank
TINY = ["model.ngf=8", "model.ndf=8", f"train.batch_size={BATCH}", "train.device=cpu", "train.amp=off",
        "train.epochs=0", "data.workers=0", "log.progress=false", "log.n_samples=16", "log.sample_every=10",
        "log.every=1", "cluster.workers=2", "cluster.cpus_per_worker=1", "cluster.gpus_per_worker=0"]


@pytest.fixture(scope="module")
def local_ray():
    """One Ray for the module, started in this process and isolated from any other Ray on the machine."""
    temp_dir = tempfile.mkdtemp(prefix="fgr", dir="/tmp")  # short: unix socket paths are limited
    env = {
        "RAY_TMPDIR": temp_dir,
        "RAY_AUTH_MODE": "disabled",  # loopback only; do not create ~/.ray/auth_token
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # no preemptible nodes here; one actor fewer to start
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",  # 2 busy cores start workers slowly
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _config(tmp_path: Path, shards: Path, *extra: str):
    return load_config(None, [*TINY, f"data.path={shards}", f"log.run_dir={tmp_path / 'run'}",
                              f"cluster.storage_path={tmp_path / 'storage'}", "cluster.name=t", *extra])


def _logged_steps(run_dir: Path) -> list[int]:
    """Steps of the per-interval records in metrics.jsonl (epoch summaries left out), in write order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "Loss/D" in r]


def _checkpoint_digest(ckpt: Path, cfg) -> str:
    """The same parameter hash the workers compute, from a checkpoint's G and D weights."""
    tensors = load_file(str(ckpt / "models.safetensors"))
    G, D = build_models(cfg.model)
    named = []
    for tag, net in (("G", G), ("D", D)):
        named += [(f"{tag}.{n}", tensors[f"{tag}.{n}"]) for n, _ in net.named_parameters()]
    return params_digest(named)


def _assert_complete(ckpt: Path, step: int | None = None) -> None:
    """A checkpoint that a crash did not cut short: all three files, readable, the step in its name."""
    state = json.loads((ckpt / "state.json").read_text())
    assert ckpt.name == ckpt_io.step_dir_name(state["step"]), f"{ckpt}: name and state.json disagree"
    if step is not None:
        assert state["step"] == step
    assert load_file(str(ckpt / "models.safetensors")), f"{ckpt}: empty weights"
    torch.load(ckpt / "optim.pt", weights_only=True)


def test_two_workers_train_in_step(local_ray, shards: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, shards, "train.steps=20", "train.checkpoint_every=10")
    metrics = run_ray(cfg, resume=False)

    assert metrics["step"] == 20
    assert metrics["Progress/images_seen"] == 20 * BATCH, "the global batch is split, not multiplied"
    # Both ranks hashed identical G and D parameters at the last checkpoint: DDP kept them in step ...
    digests = metrics["Check/params_digest"]
    assert len(digests) == 2 and digests[0] == digests[1] and digests[0], digests
    # ... and that is exactly what the checkpoint holds.
    stored = stored_checkpoints(str(tmp_path / "storage"), "t")
    assert stored == ["step-00000010", "step-00000020"]
    ray_ckpt = tmp_path / "storage" / "t" / "step-00000020"
    assert metrics["Ray/checkpoint"] == str(ray_ckpt)
    _assert_complete(ray_ckpt, 20)
    assert _checkpoint_digest(ray_ckpt, cfg) == digests[0]
    # The initial weights differ from the trained ones (the hash is not vacuous).
    G, D = build_models(cfg.model)
    assert params_digest([(f"G.{n}", p) for n, p in G.named_parameters()]
                         + [(f"D.{n}", p) for n, p in D.named_parameters()]) != digests[0]

    # Rank 0 wrote the run dir: checkpoints, TensorBoard events, samples, one record per step.
    run = tmp_path / "run"
    assert [p.name for p in ckpt_io.list_checkpoints(run / "checkpoints")] == ["step-00000010", "step-00000020"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"Loss/D", "Loss/G", "D/real", "Speed/img_per_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("Loss/D")] == list(range(1, 21))
    assert (run / "samples" / "ema-00000020.png").is_file()
    assert _logged_steps(run) == list(range(1, 21))


def test_killed_worker_restarts_from_the_newest_checkpoint(local_ray, shards: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setenv("FLOWERGAN_FAULT_STEP", "13")
    monkeypatch.setenv("FLOWERGAN_FAULT_RANK", "1")
    monkeypatch.setenv("FLOWERGAN_FAULT_ONCE", str(marker))
    cfg = _config(tmp_path, shards, "train.steps=20", "train.checkpoint_every=5", "cluster.max_failures=2",
                  "train.keep_checkpoints=10", "cluster.num_to_keep=10")
    metrics = run_ray(cfg, resume=False)

    assert marker.read_text().startswith("killed at step 13 on rank 1"), "the fault hook did not fire"
    assert metrics["step"] == 20
    assert metrics["Progress/images_seen"] == 20 * BATCH
    digests = metrics["Check/params_digest"]
    assert digests[0] == digests[1]

    # The step counter: 1..12 before the kill, then from the checkpoint Ray had registered (5 or 10: Ray
    # registers a report asynchronously) on to 20 without a gap; never from 1 again.
    steps = _logged_steps(tmp_path / "run")
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    before, after = steps[:restart], steps[restart:]
    assert before == list(range(1, 13)), before
    assert after[0] - 1 in (5, 10), f"resumed at step {after[0]}, not from a checkpoint taken before the kill"
    assert after == list(range(after[0], 21)), after

    # No half-written checkpoint anywhere: every one Ray registered and every one in the run dir is complete.
    storage = tmp_path / "storage" / "t"
    stored = stored_checkpoints(str(tmp_path / "storage"), "t")
    assert stored[-1] == "step-00000020" and stored == sorted(set(stored))
    for name in stored:
        _assert_complete(storage / name)
    local = ckpt_io.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in local] == [f"step-{s:08d}" for s in (5, 10, 15, 20)]
    for ckpt in local:
        _assert_complete(ckpt)
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*")), "a temporary checkpoint was left behind"
    assert _checkpoint_digest(storage / "step-00000020", cfg) == digests[0]


def test_launch_errors_are_one_line_before_ray_starts(shards: Path, tmp_path: Path) -> None:
    """Bad data or a foreign run dir fail on the driver in a second, before any worker starts."""
    from flowergan.errors import UserError

    with pytest.raises(UserError, match="missing"):
        run_ray(_config(tmp_path, tmp_path / "missing"), resume=False)
    with pytest.raises(UserError, match="64px images but the model is 128px"):
        run_ray(_config(tmp_path, shards, "model.resolution=128"), resume=False)
    with pytest.raises(UserError, match="shards"):  # 8 shards cannot feed 2 ranks x 5 loader processes
        run_ray(_config(tmp_path, shards, "data.workers=5"), resume=False)
    with pytest.raises(UserError, match="--gpus-per-worker 1"):
        run_ray(_config(tmp_path, shards, "train.device=cuda"), resume=False)
    # Through Ray Client the paths are the cluster's: a relative one cannot mean anything there.
    with pytest.raises(UserError, match="log.run_dir: 'runs/x' is relative"):
        run_ray(_config(tmp_path, shards, "cluster.address=ray://127.0.0.1:10001", "log.run_dir=runs/x"),
                resume=False)
    # A run dir holding checkpoints that Ray storage does not know: continuing it must be asked for.
    cfg = _config(tmp_path, shards)
    G, D = build_models(cfg.model)
    ckpt_io.save_checkpoint(tmp_path / "run" / "checkpoints", step=3, models={"G": G, "D": D}, optim={},
                            state={"config": cfg.to_dict()})
    with pytest.raises(UserError, match="--resume"):
        run_ray(cfg, resume=False)


def test_a_workers_user_error_reaches_the_driver_as_one_line(local_ray, shards: Path, tmp_path: Path) -> None:
    """Rank 0 cannot create the run dir: the group is torn down (no hang in rank 1's collectives) and the
    driver raises the worker's own one-line message."""
    from flowergan.errors import UserError

    (tmp_path / "a-file").write_text("not a directory")
    cfg = _config(tmp_path, shards, "cluster.max_failures=0")
    cfg.log.run_dir = str(tmp_path / "a-file" / "run")
    with pytest.raises(UserError, match=r"^Ray Train worker 0: log.run_dir: cannot write to .*a-file/run"):
        run_ray(cfg, resume=False)
