"""A real Ray head (`ray start --head` on 127.0.0.1, token auth as KubeRay's authOptions set it up) takes
(1) `ray job submit -- <the exact entrypoint of k8s/train.yaml>` with smoke overrides, as the RayJob submitter
runs it; (2) the same submission whose driver is SIGKILLed right after the first checkpoint was saved to the run
dir but before it reached Ray storage, then submitted again unchanged (a KubeRay retry: no --resume), which
continues from that checkpoint; and (3) a training driver that is SIGKILLed mid-run and relaunched with the same
name, which resumes from the newest checkpoint. The head's processes are stopped by their own ids."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from _procs import descendants

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts.checkpoint import step_of
from flowergan.errors import UserError
from flowergan.train.launch.ray_train import stored_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ["--workers", "2", "--gpus-per-worker", "0", "--cpus-per-worker", "1",
         "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.batch_size=8", "--set", "train.epochs=0",
         "--set", "train.device=cpu", "--set", "train.amp=off", "--set", "data.workers=0",
         "--set", "log.progress=false", "--set", "log.n_samples=16", "--set", "log.every=5"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir; stopped by its own pids."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:  # fail, not skip: these tests are the only check of the RayJob path
        pytest.fail("the Ray dashboard and job server (`ray job submit`) need ray[default]: "
                    "pip install 'ray[default,train]'")
    temp_dir = tempfile.mkdtemp(prefix="fgh", dir="/tmp")  # short: unix socket paths are limited
    gcs, dash, client, agent, agent_grpc, metrics, env_agent = _free_ports(7)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",  # the image has the console scripts on PATH
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),  # what KubeRay injects
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # no preemptible nodes here; one actor fewer
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",  # 2 busy cores start workers slowly
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}  # register reports sooner: the relaunch test waits on one
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(env_agent),
           "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = {"pid": head.pid, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "env": env,
            "temp_dir": temp_dir}
    try:
        deadline = time.time() + 180
        while True:  # the submitter waits for the dashboard the same way before `ray job submit`
            req = urllib.request.Request(f"{info['dashboard']}/api/version",
                                         headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start failed:\n{(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(1)
        yield info
    finally:
        # Stop exactly this cluster: the `ray start` process, everything below it, and anything else that runs
        # from its temp dir (no `ray stop`, which would stop every Ray on the machine).
        pids = [head.pid, *descendants(head.pid)]
        _kill(pids, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _kill([*pids, *descendants(head.pid), *_processes_mentioning(temp_dir)], signal.SIGKILL)
        head.wait()
        log.close()
        time.sleep(1)
        left = [p for p in _processes_mentioning(temp_dir) if p != os.getpid()]
        assert not left, f"Ray processes left running: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_processes(head_pid: int) -> list[int]:
    """Ray Train's controller and worker processes under the head (Ray names them in their command line)."""
    out = []
    for pid in descendants(head_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in cmdline or b"TrainController" in cmdline:
            out.append(pid)
    return out


def _rayjob() -> dict:
    (job,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "train.yaml").read_text()) if d and d["kind"] == "RayJob"]
    return job


def _in_repo(argv: list[str]) -> list[str]:
    """The image's /app holds the repository's jobs/ (see the Dockerfile): use this checkout's."""
    return [str(ROOT) + a[len("/app"):] if a.startswith("/app/") else a for a in argv]


def _resumed_from(out: str) -> str:
    """The checkpoint the driver's launch line names ('Resuming from step-00000010 in ...'), or ''."""
    m = re.search(r"Resuming from (step-\d+) in ", out)
    return m.group(1) if m else ""


def _stored_meanwhile(storage: Path, name: str) -> list[str]:
    """stored_checkpoints while a run writes: Ray rewrites its record in place, so a read may catch half of it."""
    try:
        return stored_checkpoints(str(storage), name)
    except UserError:
        return []


def _logged_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "Loss/D" in r]


def _submit(ray_head, shards: Path, tmp_path: Path, *options: str, env_vars: dict[str, str] | None = None) -> list[str]:
    """`ray job submit [options] -- <the RayJob's entrypoint>` with its runtime env, as the submitter pod runs it,
    plus smoke overrides and this test's paths (10 steps, a checkpoint every 5)."""
    job = _rayjob()
    entrypoint = _in_repo(shlex.split(job["spec"]["entrypoint"]))
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    runtime_env["env_vars"].update(env_vars or {})
    overrides = ["--run-dir", str(tmp_path / "run"), "--set", f"data.path={shards}",
                 "--set", f"cluster.storage_path={tmp_path / 'storage'}", *SMOKE,
                 "--set", "train.steps=10", "--set", "train.checkpoint_every=5"]
    return [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], *options,
            "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint, *overrides]


def test_rayjob_entrypoint_runs_via_ray_job_submit(ray_head, shards: Path, tmp_path: Path) -> None:
    """What the RayJob's submitter pod does, against a real head: `ray job submit ... -- <entrypoint>`."""
    proc = subprocess.run(_submit(ray_head, shards, tmp_path), env=ray_head["env"], capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "succeeded" in out, out[-3000:]
    assert "Ray Train: 2 worker(s)" in out, "the driver did not start Ray Train"

    name = "flowers64"  # the job file fixes the run name: a retried RayJob finds the same storage
    assert stored_checkpoints(str(tmp_path / "storage"), name) == ["step-00000005", "step-00000010"]
    state = json.loads((tmp_path / "storage" / name / "step-00000010" / "state.json").read_text())
    assert state["step"] == 10 and state["config"]["cluster"]["workers"] == 2
    assert state["config"]["data"]["path"] == str(shards)
    assert _logged_steps(tmp_path / "run") == [5, 10]
    # The run dir keeps its checkpoints: Ray uploads a copy in the background and deletes nothing there.
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run" / "checkpoints")] == \
        ["step-00000005", "step-00000010"]


def _wait_for(path: Path, job_id: str, ray_head, seconds: float) -> None:
    """Until `path` exists; fails early with the job's logs if the job ends first."""
    deadline, next_status = time.time() + seconds, time.time() + 10
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear within {seconds:.0f} s"
        if time.time() > next_status:
            status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_head["dashboard"], job_id],
                                    env=ray_head["env"], capture_output=True, text=True, timeout=60).stdout
            assert "RUNNING" in status or "PENDING" in status, status[-2000:]
            next_status = time.time() + 10
        time.sleep(0.2)


def test_retried_job_resumes_from_a_checkpoint_only_the_run_dir_has(ray_head, shards: Path, tmp_path: Path) -> None:
    """KubeRay retries a failed RayJob with the same entrypoint, without --resume. The first driver dies right
    after rank 0 wrote checkpoint 5 to the run dir and before Ray storage got it: the retry continues from that
    checkpoint (it does not start over, and does not stop with "pass --resume" on every retry)."""
    run, storage, marker = tmp_path / "run", tmp_path / "storage", tmp_path / "hung-after-save"
    # Rank 0 stops for good right after saving checkpoint 5, before reporting it; once (the retry runs through).
    fault = {"FLOWERGAN_FAULT_STEP": "5", "FLOWERGAN_FAULT_POINT": "saved", "FLOWERGAN_FAULT_ACTION": "hang",
             "FLOWERGAN_FAULT_ONCE": str(marker)}
    job_id = f"fg-retry-{secrets.token_hex(4)}"
    first = subprocess.run(_submit(ray_head, shards, tmp_path, "--no-wait", "--submission-id", job_id,
                                   env_vars=fault), env=ray_head["env"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    _wait_for(marker, job_id, ray_head, 400)
    # The driver dies (a lost head, an evicted pod): SIGKILL the entrypoint's processes, found by the run dir
    # in their command line. Ray then takes the job's controller and workers down with it.
    driver = [p for p in _processes_mentioning(str(run)) if p != os.getpid()]
    assert driver, "the entrypoint's process was not found"
    _kill(driver, signal.SIGKILL)
    deadline = time.time() + 120
    while _job_processes(ray_head["pid"]):
        assert time.time() < deadline, f"the killed driver's Ray workers still run: {_job_processes(ray_head['pid'])}"
        time.sleep(0.5)
    assert stored_checkpoints(str(storage), "flowers64") == [], "checkpoint 5 reached Ray storage before the kill"
    assert [p.name for p in ckpt_io.list_checkpoints(run / "checkpoints")] == ["step-00000005"]

    retry = subprocess.run(_submit(ray_head, shards, tmp_path, env_vars=fault), env=ray_head["env"],
                           capture_output=True, text=True, timeout=600)
    out = retry.stdout + retry.stderr
    assert retry.returncode == 0 and "succeeded" in out, out[-6000:]
    assert f"Resuming from step-00000005 in {run}/checkpoints (Ray storage has none" in out, out[-3000:]
    assert f"rank 0: resuming from {run}/checkpoints/step-00000005 (the run dir)" in out, out[-3000:]
    assert _logged_steps(run) == [5, 10], "the retry did not continue at step 6"
    assert stored_checkpoints(str(storage), "flowers64") == ["step-00000010"]
    state = json.loads((storage / "flowers64" / "step-00000010" / "state.json").read_text())
    assert state["step"] == 10 and state["images_seen"] == 10 * 8


def test_relaunched_driver_resumes_from_storage(ray_head, shards: Path, tmp_path: Path) -> None:
    """A driver killed mid-run and started again with the same name continues from the newest stored
    checkpoint (what a RayJob retry after a lost head does), and finishes at the target step."""
    storage, run, steps = tmp_path / "storage", tmp_path / "run", 150
    cmd = [str(BIN / "flowergan"), "train", "--config", str(ROOT / "jobs" / "smoke.toml"), "--ray",
           "--address", ray_head["gcs"], "--run-dir", str(run), "--set", f"data.path={shards}",
           "--set", f"cluster.storage_path={storage}", "--set", "cluster.name=relaunch", *SMOKE,
           "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=10", "--set", "log.sample_every=1000"]
    env = ray_head["env"]

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 400
        while not _stored_meanwhile(storage, "relaunch"):
            assert first.poll() is None, f"the first driver ended before a checkpoint:\n{first.stdout.read()[-4000:]}"
            assert time.time() < deadline, "no checkpoint reached Ray storage in time"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)  # the driver (and with it its Ray job) dies mid-run
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stdout.close()
    # Ray takes the dead driver's job down with it: its controller and workers exit (they do not keep
    # training into the same run dir while the relaunch starts).
    deadline = time.time() + 120
    while _job_processes(ray_head["pid"]):
        assert time.time() < deadline, f"the killed driver's Ray workers still run: {_job_processes(ray_head['pid'])}"
        time.sleep(0.5)
    at_kill = stored_checkpoints(str(storage), "relaunch")
    # The run dir may be ahead of Ray storage (a checkpoint saved, its upload not registered): the newer wins.
    local = [p.name for p in ckpt_io.list_checkpoints(run / "checkpoints")]
    newest = max(at_kill[-1], local[-1], key=step_of)
    steps_before = _logged_steps(run)
    assert steps_before and steps_before[-1] < steps, "the first driver finished before it was killed"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-6000:]
    resumed_from = _resumed_from(out)
    assert resumed_from == newest, f"the relaunch did not resume from {newest} ({at_kill}, {local}):\n{out[-3000:]}"

    where = "run/checkpoints" if newest in local and newest not in at_kill else "storage/relaunch"
    assert f"rank 0: resuming from {tmp_path}/{where}/{newest} (" in out, out[-3000:]
    # Every interval logged once: a resumed run trims metrics.jsonl after its checkpoint's step.
    assert _logged_steps(run) == list(range(5, steps + 1, 5)), "the step counter is not continuous after the relaunch"
    final = stored_checkpoints(str(storage), "relaunch")[-1]
    assert final == ckpt_io.step_dir_name(steps)
    assert json.loads((storage / "relaunch" / final / "state.json").read_text())["images_seen"] == steps * 8
