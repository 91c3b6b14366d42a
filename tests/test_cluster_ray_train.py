"""Ray Train with a real Ray started in this process (2 CPU workers, gloo): ranks stay identical, checkpoints are
written to the run dir and uploaded to Ray storage in the background (and stay in the run dir), TensorBoard events
are written, and a worker killed with SIGKILL between saving a checkpoint and reporting it is replaced and resumes
from that checkpoint (the run dir's, newer than any Ray holds), finishing at the target step with a continuous step
counter."""

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

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.config import load_config
from flowergan.errors import UserError
from flowergan.models import build_models
from flowergan.train.launch.ray_train import _check_launch, params_digest, resolve_paths, run_ray, stored_checkpoints

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
    """The same parameter hash the workers compute, from a checkpoint's G, D and G_ema weights."""
    tensors = load_file(str(ckpt / "models.safetensors"))
    G, D = build_models(cfg.model)
    named = []
    for tag, net in (("G", G), ("D", D), ("G_ema", G)):
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
    assert params_digest([(f"{t}.{n}", p) for t, net in (("G", G), ("D", D), ("G_ema", G))
                          for n, p in net.named_parameters()]) != digests[0]

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
    """Rank 0 dies right after writing checkpoint 10 and before Ray Train hears of it: Ray holds at most
    checkpoint 5, the run dir holds 10, and the restarted workers continue from 10."""
    marker = tmp_path / "killed"
    monkeypatch.setenv("FLOWERGAN_FAULT_STEP", "10")
    monkeypatch.setenv("FLOWERGAN_FAULT_POINT", "saved")
    monkeypatch.setenv("FLOWERGAN_FAULT_ONCE", str(marker))
    cfg = _config(tmp_path, shards, "train.steps=20", "train.checkpoint_every=5", "cluster.max_failures=2",
                  "train.keep_checkpoints=10", "cluster.num_to_keep=10")
    metrics = run_ray(cfg, resume=False)

    assert marker.read_text().startswith("kill at step 10 (saved) on rank 0"), "the fault hook did not fire"
    assert metrics["step"] == 20
    assert metrics["Progress/images_seen"] == 20 * BATCH
    digests = metrics["Check/params_digest"]
    assert digests[0] == digests[1]

    # The restarted workers continued from the run dir's checkpoint 10, not from Ray's 5: checkpoint 10 was never
    # written again (its files predate the kill) and never reported, and every step was logged once.
    ckpt10 = tmp_path / "run" / "checkpoints" / "step-00000010"
    assert (ckpt10 / "state.json").stat().st_mtime_ns <= marker.stat().st_mtime_ns, "checkpoint 10 was redone"
    assert _logged_steps(tmp_path / "run") == list(range(1, 21))

    # No half-written checkpoint anywhere: every one Ray registered and every one in the run dir is complete.
    storage = tmp_path / "storage" / "t"
    stored = stored_checkpoints(str(tmp_path / "storage"), "t")
    assert stored[-1] == "step-00000020" and stored == sorted(set(stored))
    assert "step-00000010" not in stored, "checkpoint 10 was reported although its worker died before reporting"
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
    # A run dir whose newest checkpoint is another run's (another cluster.name): continuing it must be asked for.
    cfg = _config(tmp_path, shards)
    other = _config(tmp_path, shards, "cluster.name=other")
    G, D = build_models(cfg.model)
    ckpt_io.save_checkpoint(tmp_path / "run" / "checkpoints", step=3, models={"G": G, "D": D}, optim={},
                            state={"config": other.to_dict()})
    with pytest.raises(UserError, match=r"step-00000003 is not this run's checkpoint \(it was trained as run "
                                        r"'other', this is run 't'\); pass --resume"):
        run_ray(cfg, resume=False)


def test_the_launch_plan_names_the_newest_checkpoint(shards: Path, tmp_path: Path) -> None:
    """The driver's line says where the workers will start: nothing, Ray storage, or the run dir when it is
    ahead of Ray storage (a crash between saving and reporting). No Ray is started for this."""
    cfg = resolve_paths(_config(tmp_path, shards))
    run_ckpts = tmp_path / "run" / "checkpoints"
    assert stored_checkpoints(str(tmp_path / "storage"), "t") == []  # no run folder at all
    (tmp_path / "storage" / "t").mkdir(parents=True)
    assert stored_checkpoints(str(tmp_path / "storage"), "t") == []  # a run folder without a registered checkpoint
    assert _check_launch(cfg, resume=False).startswith(f"Starting at step 0: no checkpoint in {tmp_path}/storage/t")
    # A record Ray cannot read (another Ray version wrote it, or a write was cut short): one line, not a traceback.
    (tmp_path / "storage" / "t" / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_results": [')
    with pytest.raises(UserError, match=r"storage/t holds a run record that Ray [\d.]+ cannot read"):
        stored_checkpoints(str(tmp_path / "storage"), "t")
    (tmp_path / "storage" / "t" / "checkpoint_manager_snapshot.json").unlink()

    G, D = build_models(cfg.model)
    ckpt_io.save_checkpoint(run_ckpts, step=3, models={"G": G, "D": D}, optim={}, state={"config": cfg.to_dict()})
    assert _check_launch(cfg, resume=False) == (f"Resuming from step-00000003 in {run_ckpts} (Ray storage has none: "
                                                "the last run stopped between saving it and Ray storing it)")
    # A run dir written with another model is another run, even under the same name.
    wider = resolve_paths(_config(tmp_path, shards, "model.ngf=16"))
    with pytest.raises(UserError, match=r"its \[model\] section differs from this run's\); pass --resume"):
        _check_launch(wider, resume=False)
    assert _check_launch(wider, resume=True).endswith("(--resume: its [model] section differs from this run's)")


def test_a_workers_user_error_reaches_the_driver_as_one_line(local_ray, shards: Path, tmp_path: Path) -> None:
    """Rank 0 cannot create the run dir: the group is torn down (no hang in rank 1's collectives) and the
    driver raises the worker's own one-line message."""
    (tmp_path / "a-file").write_text("not a directory")
    cfg = _config(tmp_path, shards, "cluster.max_failures=0")
    cfg.log.run_dir = str(tmp_path / "a-file" / "run")
    with pytest.raises(UserError, match=r"^Ray Train worker 0: log.run_dir: cannot write to .*a-file/run"):
        run_ray(cfg, resume=False)


def test_a_job_killed_and_started_again_ends_bit_identical_on_every_rank(local_ray, shards: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """8 steps straight vs: rank 0 SIGKILLed at step 6 with no retries left (the job fails, Ray takes every worker
    down), then the same run started again, which resumes from checkpoint 4. Every rank's hash of its G, D and
    G_ema and rank 0's checkpoint, BatchNorm statistics included, equal the straight run's: each rank got its own
    RNG state back."""
    common = ("train.steps=8", "train.checkpoint_every=4", "log.every=2")
    straight = run_ray(_config(tmp_path / "straight", shards, *common), resume=False)

    marker = tmp_path / "killed"
    monkeypatch.setenv("FLOWERGAN_FAULT_STEP", "6")
    monkeypatch.setenv("FLOWERGAN_FAULT_ONCE", str(marker))
    cfg = _config(tmp_path / "split", shards, *common, "cluster.max_failures=0")
    with pytest.raises(ray.train.TrainingFailedError):
        run_ray(cfg, resume=False)
    assert marker.read_text().startswith("kill at step 6 (step) on rank 0")
    # Checkpoint 4 is in the run dir (Ray's background upload may not have registered it before the kill).
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "split" / "run" / "checkpoints")] == ["step-00000004"]
    resumed = run_ray(cfg, resume=False)

    assert resumed["step"] == 8
    digests = resumed["Check/params_digest"]
    assert len(digests) == 2 and digests == straight["Check/params_digest"], (digests, straight)
    a = load_file(str(tmp_path / "straight" / "storage" / "t" / "step-00000008" / "models.safetensors"))
    b = load_file(str(tmp_path / "split" / "storage" / "t" / "step-00000008" / "models.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _logged_steps(tmp_path / "split" / "run") == [2, 4, 6, 8]


def test_ranks_that_differ_stop_the_run_with_one_line(local_ray, shards: Path, tmp_path: Path, monkeypatch) -> None:
    """Rank 1 nudges a G weight after step 3: at checkpoint 4 the workers' hashes differ, every worker stops, the
    driver raises that one line, and the disagreeing checkpoint is neither kept nor reported."""
    monkeypatch.setenv("FLOWERGAN_FAULT_STEP", "3")
    monkeypatch.setenv("FLOWERGAN_FAULT_RANK", "1")
    monkeypatch.setenv("FLOWERGAN_FAULT_ACTION", "perturb")
    cfg = _config(tmp_path, shards, "train.steps=8", "train.checkpoint_every=4", "cluster.max_failures=0")
    with pytest.raises(UserError, match=r"^Ray Train worker \d: G/D/G_ema parameters differ across ranks at step 4 "
                                        r"\(rank 0: [0-9a-f]{12}, rank 1: [0-9a-f]{12}\)"):
        run_ray(cfg, resume=False)
    assert ckpt_io.list_checkpoints(tmp_path / "run" / "checkpoints") == []
    assert stored_checkpoints(str(tmp_path / "storage"), "t") == []
