"""`torchrun --nproc-per-node 2 -m flowergan train` on the CPU (gloo): the ranks form one process group, rank 0
alone writes one run dir, a whole job SIGKILLed mid-run and resumed ends bit-identical to an uninterrupted run on
every rank (and so does one whose newest checkpoint was then damaged: it resumes from the intact one before), and
the cross-rank consistency check stops a run (compiled G and D) whose ranks' weights differ."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _procs import descendants
from safetensors.torch import load_file

from flowergan.artifacts import checkpoint as ckpt_io

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["model.ngf=8", "model.ndf=8", "train.batch_size=8", "train.device=cpu", "train.amp=off", "data.workers=0",
        "log.progress=false", "log.n_samples=16", "log.every=2", "log.sample_every=4", "train.checkpoint_every=4",
        "train.keep_checkpoints=5"]
DIGEST = re.compile(r"checkpoint (\d+): G/D/G_ema parameters identical on all 2 ranks \(sha256 ([0-9a-f]{64})\)")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """64 SynthFlowers at 64 px in 8 shards: each of 2 ranks reads its own 4."""
    from flowergan.data.ingest.synth import write_synthflowers

    out = tmp_path_factory.mktemp("synth") / "synth64"
    write_synthflowers(out, n=64, size=64, seed=0, shard_size=8, progress=False)
    return out


def _cmd(run: Path, shards: Path, *extra: str, entry: tuple[str, ...] = ("-m", "flowergan")) -> list[str]:
    sets = [a for kv in [*TINY, f"data.path={shards}", *extra] for a in ("--set", kv)]
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", *entry, "train", "--run-dir", str(run),
            *sets]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("RANK", None)  # this process is no rank; the children get theirs from torchrun
    return env


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=600, cwd=ROOT)


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt_io.list_checkpoints(run / "checkpoints")[-1] / "models.safetensors"))


def _logged_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "Loss/D" in r]


def test_sigkilled_job_resumes_bit_identical_on_every_rank(shards: Path, tmp_path: Path) -> None:
    straight, split, marker = tmp_path / "straight", tmp_path / "split", tmp_path / "hung"
    r = _run(_cmd(straight, shards, "train.steps=8"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # One run dir, one set of logs: rank 0 alone wrote; each step logged once; one summary.
    assert len(list((straight / "tb").glob("events.out.tfevents.*"))) == 1
    assert _logged_steps(straight) == [2, 4, 6, 8]
    assert r.stdout.count("done:") == 1
    assert [p.name for p in ckpt_io.list_checkpoints(straight / "checkpoints")] == ["step-00000004", "step-00000008"]
    straight_digests = dict(DIGEST.findall(r.stdout))
    assert set(straight_digests) == {"4", "8"}, r.stdout[-3000:]

    # The same job, stopped dead at step 6 (checkpoint 4 written): rank 0 hangs, then every process of the job,
    # torchrun and both ranks, is SIGKILLed. Then the same command with --resume.
    _kill_at(6, _cmd(split, shards, "train.steps=8"), marker)
    assert [p.name for p in ckpt_io.list_checkpoints(split / "checkpoints")] == ["step-00000004"]
    r = _run(_cmd(split, shards, "train.steps=8", entry=("-m", "flowergan")) + ["--resume"],
             FLOWERGAN_FAULT_ONCE=str(marker))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "note:" not in r.stdout, "the same world size must restore every rank's own RNG state"
    # Every rank's G, D and G_ema parameters at step 8 are the uninterrupted run's (each rank hashed its own;
    # the check gathered them), and rank 0's checkpoint matches to the last bit, BatchNorm statistics included.
    assert dict(DIGEST.findall(r.stdout)) == {"8": straight_digests["8"]}, r.stdout[-3000:]
    a, b = _final_state(straight), _final_state(split)
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"G", "D", "G_ema"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _logged_steps(split) == [2, 4, 6, 8]
    assert len(list((split / "tb").glob("events.out.tfevents.*"))) == 2  # one per attempt, curves purged

    # Then the newest checkpoint is damaged (64 bytes of a tensor overwritten with 0xFF, as the issue found it) and
    # the job relaunched: rank 0 says in one line which checkpoint it skipped and why, and both ranks continue from
    # the newest intact one, step 4, to the very step-8 weights, as if the damaged one had never been written.
    weights = split / "checkpoints" / "step-00000008" / "models.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little") + 256
    data[start:start + 64] = b"\xff" * 64
    weights.write_bytes(bytes(data))
    r = _run(_cmd(split, shards, "train.steps=8") + ["--resume"], FLOWERGAN_FAULT_ONCE=str(marker))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert [line for line in r.stdout.splitlines() if "damaged" in line] == [
        "warning: skipped damaged checkpoint step-00000008 (models.safetensors does not match its sha256 (truncated "
        "or altered)); resuming from step-00000004"], r.stdout[-3000:]
    assert dict(DIGEST.findall(r.stdout)) == {"8": straight_digests["8"]}, r.stdout[-3000:]
    a, b = _final_state(straight), _final_state(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt_io.damage(split / "checkpoints" / "step-00000008") is None


def _kill_at(step: int, cmd: list[str], marker: Path) -> None:
    """Run `cmd` until the fault hook hangs rank 0 at `step`, then SIGKILL torchrun and every rank."""
    job = subprocess.Popen(cmd, env=_env(FLOWERGAN_FAULT_STEP=str(step), FLOWERGAN_FAULT_ACTION="hang",
                                         FLOWERGAN_FAULT_ONCE=str(marker)),
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 400
        while not marker.exists():
            assert job.poll() is None and time.time() < deadline, "the job ended before the fault hook fired"
            time.sleep(0.2)
    finally:
        for pid in [job.pid, *descendants(job.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.wait()


def test_sigkilled_conditional_job_resumes_bit_identical_on_every_rank(shards: Path, tmp_path: Path) -> None:
    """A projection cGAN with hinge loss and fake classes from the data's frequencies: each rank draws its fake
    labels from its own stream, which the checkpoint restores, so the resumed run is the uninterrupted one."""
    straight, split, marker = tmp_path / "straight", tmp_path / "split", tmp_path / "hung"
    cond = ("train.steps=8", "model.conditional=projection", "train.loss=hinge")
    r = _run(_cmd(straight, shards, *cond))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    digests = dict(DIGEST.findall(r.stdout))
    assert set(digests) == {"4", "8"}, r.stdout[-3000:]
    _kill_at(6, _cmd(split, shards, *cond), marker)
    assert [p.name for p in ckpt_io.list_checkpoints(split / "checkpoints")] == ["step-00000004"]
    r = _run(_cmd(split, shards, *cond) + ["--resume"], FLOWERGAN_FAULT_ONCE=str(marker))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert dict(DIGEST.findall(r.stdout)) == {"8": digests["8"]}, r.stdout[-3000:]
    a, b = _final_state(straight), _final_state(split)
    assert any(".embed." in k for k in a)  # the conditional nets, with their class embeddings
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_consistency_check_stops_a_compiled_run_whose_ranks_differ(shards: Path, tmp_path: Path) -> None:
    """Rank 1 nudges one G weight after step 3 (outside the optimizer): at checkpoint 4 the ranks' hashes differ
    and every rank stops with the same one-line error; the disagreeing checkpoint is not kept."""
    run = tmp_path / "run"
    cmd = _cmd(run, shards, "train.steps=8", "train.compile=true", entry=(str(ROOT / "tests" / "_eager_compile.py"),))
    r = _run(cmd, FLOWERGAN_FAULT_STEP="3", FLOWERGAN_FAULT_RANK="1", FLOWERGAN_FAULT_ACTION="perturb",
             PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "eval"), os.environ.get("PYTHONPATH", "")]))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    assert re.search(r"error: G/D/G_ema parameters differ across ranks at step 4 \(rank 0: [0-9a-f]{12}, "
                     r"rank 1: [0-9a-f]{12}\)", out), out[-4000:]
    assert "Traceback" not in r.stdout
    assert ckpt_io.list_checkpoints(run / "checkpoints") == []


def test_same_compiled_run_without_the_fault_passes_the_check(shards: Path, tmp_path: Path) -> None:
    """The check is not vacuous the other way either: compiled, unperturbed ranks agree at every checkpoint. Compiled
    through AOTAutograd (inductor's path) with the job files' recipe: R1's double backward runs through the DDP
    D uncompiled, DiffAugment, EMA."""
    run = tmp_path / "run"
    cmd = _cmd(run, shards, "train.steps=4", "train.compile=true", "train.r1_gamma=1",
               "train.diffaugment=color,translation", entry=(str(ROOT / "tests" / "_eager_compile.py"),))
    r = _run(cmd, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "eval"), os.environ.get("PYTHONPATH", "")]),
             FLOWERGAN_COMPILE_BACKEND="aot_eager")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert set(dict(DIGEST.findall(r.stdout))) == {"4"}
