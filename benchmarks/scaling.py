"""Ray Train data-parallel scaling on this machine: 1 vs 2 CPU workers (gloo), measured side by side in one run.

Each worker gets one CPU (Ray sets OMP_NUM_THREADS=1: one torch thread each) and the same per-worker batch, so
the global batch grows with the workers (weak scaling): the ratio shows what DDP's all-reduce and the extra
process cost, not how a fixed global batch splits. Throughput is images per second of rank 0's logged intervals
after warm-up (`Progress/images_seen` and the wall-clock stamps in metrics.jsonl), so Ray and worker start-up
are excluded.
Rounds alternate 1, 2, 1, 2, ... workers so slow drifts of the machine hit both equally; medians are reported.

    python benchmarks/scaling.py [--rounds 2] [--steps 60] [--per-worker-batch 32]

The last line is `scaling ratio=<2-worker img/s / 1-worker img/s>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _throughput(run_dir: Path, warmup_steps: int) -> float:
    """Images per second between the first logged interval after warm-up and the last one."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "Progress/images_seen" in r and r["step"] >= warmup_steps]
    first, last = rows[0], rows[-1]
    return (last["Progress/images_seen"] - first["Progress/images_seen"]) / (last["time"] - first["time"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternating 1- and 2-worker runs of each")
    ap.add_argument("--steps", type=int, default=60, help="G steps per run")
    ap.add_argument("--per-worker-batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=32, help="ngf = ndf (jobs/smoke.toml's CPU model: 32)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fgscale", dir="/tmp"))  # short: Ray's unix sockets live below it
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; leaves ~/.ray alone
    os.environ["RAY_TMPDIR"] = str(work / "ray")
    shards = work / "synth64"
    subprocess.run([str(Path(sys.executable).parent / "flowergan"), "data", "synth", "--out", str(shards),
                    "--n", "1024", "--size", "64", "--seed", "0", "--shard-size", "64", "--no-progress"],
                   check=True, capture_output=True)

    import ray

    from flowergan.config import load_config
    from flowergan.train.launch.ray_train import run_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    speeds: dict[int, list[float]] = {1: [], 2: []}
    try:
        for r in range(args.rounds):
            for workers in (1, 2):
                run_dir = work / f"run-{workers}w-{r}"
                cfg = load_config(ROOT / "jobs" / "smoke.toml", [
                    f"data.path={shards}", "data.workers=0", f"log.run_dir={run_dir}", f"cluster.name={run_dir.name}",
                    f"model.ngf={args.width}", f"model.ndf={args.width}",
                    f"train.batch_size={args.per_worker_batch * workers}", f"train.steps={args.steps}",
                    f"train.checkpoint_every={args.steps}", "log.every=5", f"log.sample_every={args.steps}",
                    "log.progress=false", "log.tensorboard=false", f"cluster.workers={workers}",
                    "cluster.cpus_per_worker=1", "cluster.gpus_per_worker=0"])
                run_ray(cfg, resume=False)
                speed = _throughput(run_dir, warmup_steps=10)
                speeds[workers].append(speed)
                print(f"round {r + 1}: {workers} worker(s) x batch {args.per_worker_batch}: {speed:7.1f} img/s",
                      flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    one, two = statistics.median(speeds[1]), statistics.median(speeds[2])
    print(f"median: 1 worker {one:.1f} img/s, 2 workers {two:.1f} img/s "
          f"(ideal 2.00x; {os.cpu_count()} CPUs on this machine, ngf=ndf={args.width}, 64 px, gloo)")
    print(f"scaling ratio={two / one:.2f}")


if __name__ == "__main__":
    main()
