"""What a person sees of a run: TensorBoard and metrics.jsonl after a resume, and progress where there is no
terminal (kubectl logs, ray job logs, a file) as well as on one."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _core import TensorStream, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.train.loop import train

FLOWERGAN = str(Path(sys.executable).parent / "flowergan")


def _jsonl(run: Path, tag: str) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[tag]) for r in lines if tag in r]


def test_resume_after_a_lost_checkpoint_never_overlaps_curves(tmp_path, one_thread):
    """Steps 11-20 were logged, but their checkpoint was lost: the resumed run's values replace them."""
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=20"), stream=TensorStream())
    shutil.rmtree(run / "checkpoints" / "step-00000020")  # the crash came before step 20's checkpoint
    first = dict(_jsonl(run, "Loss/D"))
    # Other images after the resume, so the second attempt's values differ from the first's.
    train(tiny_config(run, "train.steps=20"), stream=TensorStream(seed=1), resume=True)

    logged = _jsonl(run, "Loss/D")
    assert [s for s, _ in logged] == [5, 10, 15, 20]
    assert logged[1][1] == first[10] and logged[3][1] != first[20]  # kept up to the resume, then the new run

    # TensorBoard: the resumed writer marks step 11 on, and a reader shows one curve with the new values.
    files = sorted((run / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    starts = [e.step for e in EventFileLoader(str(files[-1])).Load()
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [11]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("Loss/D")]
    assert [s for s, _ in tb] == [5, 10, 15, 20]
    assert [v for _, v in tb] == pytest.approx([v for _, v in logged], rel=1e-6)


def test_a_fresh_start_forgets_a_failed_attempts_logs(tmp_path, one_thread):
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=8", "train.checkpoint_every=100"), stream=TensorStream())
    shutil.rmtree(run / "checkpoints")  # it died before its first checkpoint: the next start is from 0
    train(tiny_config(run, "train.steps=8", "train.checkpoint_every=100"), stream=TensorStream())
    assert [s for s, _ in _jsonl(run, "Loss/D")] == [5, 8]


def _cmd(shards: Path, run: Path, steps: int) -> list[str]:
    return [FLOWERGAN, "train", "--run-dir", str(run), "--device", "cpu", "--set", f"data.path={shards}",
            "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.batch_size=8",
            "--set", f"train.steps={steps}", "--set", "log.every=2", "--set", "log.sample_every=1000",
            "--set", "train.checkpoint_every=1000", "--set", "data.workers=0"]


def test_without_a_terminal_one_plain_line_per_log_interval(shards, tmp_path):
    """stdout is a pipe (as under kubectl logs): lines arrive while the run is going, one per log.every steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(shards, tmp_path / "run", 100_000), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("step "):
                lines.append(line.strip())
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert still_running, "progress lines only came when the process ended"
    pattern = (r"step (\d+)/100000 \(0%\)  \d+ img/s  D \d+\.\d{3}  G \d+\.\d{3}  D\(x\) \d\.\d{3}  "
               r"D\(G\(z\)\) \d\.\d{3}  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d")
    steps = [int(re.fullmatch(pattern, line).group(1)) for line in lines]
    assert steps == [2, 4]


def test_on_a_terminal_a_live_bar_and_no_plain_lines(shards, tmp_path):
    master, slave = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "COLUMNS": "160"}
    proc = subprocess.Popen(_cmd(shards, tmp_path / "run", 6), stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-2000:]
    text = out.decode(errors="replace")
    assert "\x1b[" in text and "━" in text and "ETA" in text  # rich's bar, redrawn with escape codes
    assert re.search(r"img/s  D \d+\.\d{3}  G \d+\.\d{3}", text)
    assert not re.search(r"^step \d+/6 ", text, re.M)
    assert ckpt_io.list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name == "step-00000006"
