"""The GPU check: train-step img/s (tutorial vs flowergan), end-to-end `flowergan train`, pytest -m gpu, one JSON.

Run it through `benchmarks/gpu_check.sh` (which installs carried wheels and sets PYTHONPATH). Sections run in
this order, each under the time left of `--budget-s`, and the JSON is rewritten after each, so a run cut short
still leaves what it measured:

1. train steps (gpu_steps.py) at each `--batches` size: the tutorial (ImageFolder loader; GPU tensors) and
   flowergan (fp32, bf16, + channels_last, + torch.compile with CUDA graphs), img/s, ratios to the tutorial,
   TFLOP/s of useful work against the chip's bf16 peak (datasheet and a measured bf16 matrix product);
2. end to end: `python -m flowergan train --config jobs/flowers64.toml` for `--e2e-seconds` at batch 128 (the
   largest batch measured at most 128), from flowers5 shards, with the fastest flowergan set-up of step 1;
3. `pytest -m gpu` over the test files that hold gpu tests.

    bash benchmarks/gpu_check.sh                        # on the GPU machine, ~7 minutes
    bash benchmarks/gpu_check.sh --device cpu --quick   # the same path on a CPU in under a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step.py and gpu_steps.py beside this file

import gpu_steps as S  # noqa: E402

from flowergan.config import ModelConfig  # noqa: E402
from flowergan.devices import pick_device  # noqa: E402
from flowergan.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TAR_NAMES = (ROOT / "data" / "flowers5-128.tar",  # where --prepare puts it: ../shared does not travel to the GPU
             Path(os.environ.get("FLOWERGAN_SHARED", ROOT.parent / "shared")) / "data" / "flowers5-128.tar")
TUTORIAL_IF, TUTORIAL_T = "tutorial_imagefolder", "tutorial_gpu_tensors"
PYTEST_RESERVE_S = 120.0  # pytest -m gpu on an H200: compile tests included (an estimate: not measured yet)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: the whole path in under a minute on a CPU")
    p.add_argument("--out", type=Path, default=None, help="where gpu_check.json and the logs go ($OUT, else "
                   "runs/gpu-check)")
    p.add_argument("--data", type=Path, default=None, help="flowers5-128.tar (default: data/, then ../shared/data/)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 64,128,512; quick: 8)")
    p.add_argument("--workers", type=int, default=8, help="loader workers of the tutorial's DataLoader and ours")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per variant (default 3; quick 1)")
    p.add_argument("--round-seconds", type=float, default=None, help="time per variant per round (default 1.0)")
    p.add_argument("--e2e-seconds", type=float, default=None, help="end-to-end training time (default 120)")
    p.add_argument("--budget-s", type=float, default=None, help="time for everything (default 480; quick 300)")
    p.add_argument("--no-steps", dest="steps", action="store_false", help="skip the train-step section")
    p.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end section")
    p.add_argument("--no-pytest", dest="pytest", action="store_false", help="skip pytest -m gpu")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------------------
# Set-up: the machine, the data.


def machine(device: torch.device) -> dict[str, Any]:
    """What ran: chip, torch, CUDA, cuDNN, CPU count, date (UTC)."""
    info: dict[str, Any] = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                            "torch": torch.__version__, "python": platform.python_version(),
                            "cpus": os.cpu_count(), "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(chip=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info["chip"] = platform.processor() or platform.machine()
    return info


def prepare_data(tar: Path, work: Path, quick: bool, workers: int) -> tuple[Path, Path]:
    """(ImageFolder root of the photos, 64 px flowergan shards of the same photos); quick keeps 24 per class."""
    import io

    from rich.console import Console

    from flowergan.data.ingest.archives import extract
    from flowergan.data.ingest.images import ImageOptions
    from flowergan.data.ingest.sharder import ShardOptions, shard_source

    src = next(p for p in extract(tar, work / "src").root.iterdir() if p.is_dir())
    if quick:
        for cls in (d for d in src.iterdir() if d.is_dir()):
            for f in sorted(cls.iterdir())[24:]:
                f.unlink()
    shard_source(src, work / "shards64", ShardOptions(image=ImageOptions(size=64), workers=workers),
                 progress=False, console=Console(file=io.StringIO()))
    return src, work / "shards64"


# --------------------------------------------------------------------------------------------------------------
# 1. Train steps.


def _with_rates(row: dict[str, Any], flops: float, peaks: dict[str, float | None]) -> dict[str, Any]:
    tflops = row["img_per_s"] * flops / 1e12
    row["tflops"] = round(tflops, 3)
    for key, peak in peaks.items():
        row[f"pct_of_{key}"] = None if not peak else round(100 * tflops / peak, 2)
    row["img_per_s"] = round(row["img_per_s"], 1)
    return row


def train_steps(args: argparse.Namespace, device: torch.device, src: Path, shards: Path, flops: dict[str, float],
                peaks: dict[str, float | None], deadline: float) -> dict[str, Any]:
    """Every variant at every batch size; ratios to both tutorial variants of the same rounds."""
    quick_cpu = args.quick and device.type == "cpu"
    out: dict[str, Any] = {}
    last = 0.0  # seconds the previous batch size took: the next one starts only if about as much time is left
    for batch in sorted(args.batch_list, key=lambda b: (b != 128, b)):  # 128 first: the targets are at 128
        if time.monotonic() + last > deadline:
            out[str(batch)] = {"skipped": "out of time (--budget-s)"}
            continue
        t0 = time.monotonic()
        steps: dict[str, S.Step] = {TUTORIAL_IF: S.tutorial_imagefolder(src, batch, args.workers, device, args.width)}
        first = next(iter(torch.utils.data.DataLoader(_imagefolder(src), batch_size=batch)))[0]
        steps[TUTORIAL_T] = S.tutorial_tensors(first, device, args.width)
        stream = S.flowergan_stream(shards, batch, args.workers, device)
        skipped: dict[str, str] = {}
        for v in S.FLOWERGAN_VARIANTS:
            if v.compile and quick_cpu:
                skipped[v.name] = "not run by --quick on the CPU (inductor takes about a minute to compile there)"
                continue
            steps[v.name] = S.flowergan_step(stream, v, batch, device, args.width)
        rows = S.measure(steps, batch, device, rounds=args.rounds, seconds=args.round_seconds,
                         warmup=1 if args.quick else 5, min_steps=2 if args.quick else 5)
        for row in rows.values():
            _with_rates(row, flops["flowergan_step"], peaks)
            for key, base in (("ratio_vs_tutorial", TUTORIAL_IF), ("ratio_vs_tutorial_gpu_tensors", TUTORIAL_T)):
                row[key] = round(S.paired_ratio(row["rounds"], rows[base]["rounds"]), 3)
        rows.update({k: {"skipped": why} for k, why in skipped.items()})
        out[str(batch)] = {"flowergan_cache": stream.cache, **rows}
        del steps, stream
        if device.type == "cuda":
            torch.cuda.empty_cache()
        last = time.monotonic() - t0
    return {str(b): out[str(b)] for b in args.batch_list}


def _imagefolder(root: Path):
    import torchvision.datasets as dset
    import torchvision.transforms as T

    return dset.ImageFolder(str(root), transform=T.Compose([
        T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))


def winner(steps: dict[str, Any], batch: int) -> S.Variant:
    """The fastest flowergan variant measured at `batch` (bf16 + channels_last when nothing was measured)."""
    rows = steps.get(str(batch), {})
    measured = [(rows[v.name]["img_per_s"], v) for v in S.FLOWERGAN_VARIANTS if "img_per_s" in rows.get(v.name, {})]
    return max(measured, key=lambda t: t[0])[1] if measured else S.FLOWERGAN_VARIANTS[2]


# --------------------------------------------------------------------------------------------------------------
# 2. End to end.


class _GpuMemorySampler(threading.Thread):
    """Peak memory.used of the GPU by nvidia-smi, sampled every 0.5 s while a subprocess trains."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mib: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        smi = shutil.which("nvidia-smi")
        while smi and not self.stop.wait(0.5):
            try:
                text = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                      capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib or 0.0, float(text.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return


def end_to_end(args: argparse.Namespace, device: torch.device, shards: Path, work: Path, out_dir: Path,
               steps: dict[str, Any], deadline: float) -> dict[str, Any]:
    """`flowergan train` of jobs/flowers64.toml from the shards for about `--e2e-seconds`, with the winning set-up."""
    batch = max((b for b in args.batch_list if b <= 128), default=args.batch_list[0])
    v = winner(steps, batch)
    row = steps.get(str(batch), {}).get(v.name, {})
    rate = row.get("img_per_s") or 1000.0
    # Start-up, the cache's decode and exit take about 30 s; compiling as long as the variant's warm-up took.
    overhead = 30.0 + row.get("warmup_s", 0.0)
    seconds = max(5.0, min(args.e2e_seconds, deadline - time.monotonic() - overhead))
    n_steps = 8 if args.quick else max(4, int(rate * seconds / batch))
    sets = [f"data.path={shards}", f"train.batch_size={batch}", "train.epochs=0", f"train.steps={n_steps}",
            f"train.device={device.type}", "log.progress=false", "log.tensorboard=true", *v.sets]
    if args.quick:  # the job's width, 4 loader workers and 1000-step checkpoints, scaled down with the run
        sets += [f"model.ngf={args.width}", f"model.ndf={args.width}", "log.every=2", "train.checkpoint_every=8",
                 "log.sample_every=8", "log.n_samples=16", "data.workers=1"]
    run_dir = work / "e2e-run"
    cmd = [sys.executable, "-m", "flowergan", "train", "--config", str(ROOT / "jobs" / "flowers64.toml"),
           "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    sampler = _GpuMemorySampler()
    if device.type == "cuda":
        sampler.start()
    t0 = time.monotonic()
    rc = _run_logged(cmd, out_dir / "e2e_train.log", deadline)
    wall = time.monotonic() - t0
    sampler.stop.set()
    result: dict[str, Any] = {"command": " ".join(cmd[1:]), "variant": v.name, "batch": batch, "steps": n_steps,
                              "rc": rc, "wall_s": round(wall, 1)}
    result.update(_speeds(run_dir / "metrics.jsonl", batch, wall))
    result["peak_gpu_mem_gib_nvidia_smi"] = None if sampler.peak_mib is None else round(sampler.peak_mib / 1024, 2)
    tut = steps.get(str(batch), {}).get(TUTORIAL_IF, {}).get("img_per_s")
    if tut and result.get("img_per_s_steady"):
        result["ratio_vs_tutorial"] = round(result["img_per_s_steady"] / tut, 3)
    return result


def _run_logged(cmd: list[str], log_path: Path, deadline: float) -> int:
    """Run `cmd` in the checkout with its output in `log_path`, stopped at the deadline (at least 30 s); -9 if so."""
    with open(log_path, "w") as log:
        try:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  timeout=max(30.0, deadline - time.monotonic())).returncode
        except subprocess.TimeoutExpired:
            return -9


def _speeds(metrics: Path, batch: int, wall: float) -> dict[str, Any]:
    """Steady img/s (between the second and the last log line), the median logged one, and overall over the wall."""
    if not metrics.is_file():
        return {"img_per_s_steady": None}
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if '"Speed/img_per_s"' in x]
    if not lines:
        return {"img_per_s_steady": None}
    last = lines[-1]
    out = {"steps_done": last["step"], "img_per_s_overall": round(last["Progress/images_seen"] / wall, 1),
           "img_per_s_logged_median": round(statistics.median(x["Speed/img_per_s"] for x in lines), 1)}
    if len(lines) >= 3:
        a, b = lines[1], lines[-1]
        out["img_per_s_steady"] = round((b["Progress/images_seen"] - a["Progress/images_seen"])
                                        / max(b["time"] - a["time"], 1e-9), 1)
    else:
        out["img_per_s_steady"] = out["img_per_s_logged_median"]
    return out


# --------------------------------------------------------------------------------------------------------------
# 3. pytest -m gpu.


def gpu_tests(out_dir: Path, deadline: float) -> dict[str, Any]:
    """pytest -m gpu over the test files that mark gpu tests (the others need packages the GPU machine lacks)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    xml = out_dir / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "--timeout=300", *files]
    t0 = time.monotonic()
    rc = _run_logged(cmd, out_dir / "pytest_gpu.log", deadline)
    result: dict[str, Any] = {"rc": rc, "files": files, "seconds": round(time.monotonic() - t0, 1)}
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        result.update(n, passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"],
                      failed_names=[f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                    if c.find("failure") is not None or c.find("error") is not None])
    tail = (out_dir / "pytest_gpu.log").read_text().strip().splitlines()[-1:]
    result["summary"] = re.sub(r"=+", "", tail[0]).strip() if tail else ""
    return result


# --------------------------------------------------------------------------------------------------------------
# The JSON and the table.


def table(res: dict[str, Any]) -> str:
    """The short table: img/s, ratio to the tutorial (ImageFolder / GPU tensors), TFLOP/s, % of the bf16 peak."""
    m = res["machine"]
    lines = [f"gpu_check {m['date_utc']} UTC: {m.get('chip')}, torch {m['torch']}"
             f"{', CUDA ' + str(m['cuda']) if m.get('cuda') else ''}{' (quick)' if res['quick'] else ''}",
             f"bf16 peak: datasheet {res['peak_tflops']['datasheet_bf16']} TFLOP/s, measured matmul "
             f"{res['peak_tflops']['matmul_bf16_measured']} TFLOP/s; useful work "
             f"{res['flops_per_image']['flowergan_step'] / 1e9:.2f} GFLOP per image per step",
             f"{'batch':>5} {'variant':<28} {'img/s':>9} {'x tut':>7} {'x tutGPU':>8} {'TFLOP/s':>8} {'%peak':>6}"]
    for batch, rows in res.get("train_step", {}).items():
        for name, r in rows.items():
            if not isinstance(r, dict):
                continue
            if "img_per_s" not in r:
                lines.append(f"{batch:>5} {name:<28} {'skipped':>9}  {r.get('skipped', '')[:60]}")
                continue
            pct = r.get("pct_of_datasheet_bf16")
            lines.append(f"{batch:>5} {name:<28} {r['img_per_s']:>9.0f} {r['ratio_vs_tutorial']:>7.2f} "
                         f"{r['ratio_vs_tutorial_gpu_tensors']:>8.2f} {r['tflops']:>8.2f} "
                         f"{'' if pct is None else f'{pct:.1f}':>6}")
    e = res.get("e2e")
    if e:
        lines.append(f"end to end: {e.get('variant')} batch {e.get('batch')}, {e.get('steps_done', 0)} steps in "
                     f"{e.get('wall_s')} s (rc {e.get('rc')}): steady {e.get('img_per_s_steady')} img/s, overall "
                     f"{e.get('img_per_s_overall')} img/s, x tutorial {e.get('ratio_vs_tutorial')}, peak GPU memory "
                     f"{e.get('peak_gpu_mem_gib_nvidia_smi')} GiB (nvidia-smi)")
    t = res.get("pytest")
    if t:
        lines.append(f"pytest -m gpu: {t.get('summary')} (rc {t.get('rc')}, {t.get('seconds')} s)"
                     + (f"; failed: {', '.join(t['failed_names'])}" if t.get("failed_names") else ""))
    lines.append(f"peak GPU memory of the step benchmarks: {res.get('peak_gpu_mem_gib')} GiB allocated; "
                 f"targets: {res.get('targets')}")
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets at batch 128, from the end-to-end run (None where not measured at 128)."""
    e = res.get("e2e") or {}
    if e.get("batch") != 128 or not e.get("img_per_s_steady"):
        return {"e2e_ge_5x_tutorial_b128": None, "e2e_ge_25000_img_s_b128": None}
    return {"e2e_ge_5x_tutorial_b128": (e.get("ratio_vs_tutorial") or 0) >= 5,
            "e2e_ge_25000_img_s_b128": e["img_per_s_steady"] >= 25_000}


def main(argv: list[str] | None = None) -> int:
    """Run the sections, rewrite the JSON after each, print the table; exit 1 if a section failed."""
    args = _args(argv)
    t_start = time.monotonic()
    try:  # "cuda" becomes "cuda:N": the device the stream's and the models' tensors report
        device = pick_device(args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.batch_list = [int(b) for b in (args.batches or ("8" if args.quick else "64,128,512")).split(",")]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.round_seconds = args.round_seconds or (0.3 if args.quick else 1.0)
    args.e2e_seconds = args.e2e_seconds or (4.0 if args.quick else 120.0)
    # --quick checks that everything runs, not how fast: its budget only guards against a hang on a busy machine.
    deadline = t_start + (args.budget_s or (300.0 if args.quick else 480.0))
    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-check")
    out_dir.mkdir(parents=True, exist_ok=True)
    tar = args.data or next((p for p in TAR_NAMES if p.is_file()), None)
    if tar is None or not tar.is_file():
        print(f"error: flowers5-128.tar not found ({', '.join(map(str, TAR_NAMES))}); pass --data or run "
              "bash benchmarks/gpu_check.sh --prepare", file=sys.stderr)
        return 2
    if device.type == "cuda":  # one static shape per compiled variant, as in training; room for every variant
        from torch import _dynamo

        _dynamo.config.automatic_dynamic_shapes = False
        for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one torch 2.4 knows
            if hasattr(_dynamo.config, name):
                setattr(_dynamo.config, name, 64)
    if args.quick and device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors; OpenMP spin-waits badly on a busy machine

    args.width = 8 if args.quick else 64  # ngf = ndf: quick runs a narrow DCGAN (1/64 of the FLOPs)
    if args.quick:
        args.workers = min(args.workers, os.cpu_count() or 1)
    flops = S.step_flops(ModelConfig(ngf=args.width, ndf=args.width))
    res: dict[str, Any] = {"schema": 1, "quick": args.quick, "machine": machine(device), "batches": args.batch_list,
                           "flops_per_image": flops,
                           "peak_tflops": {"datasheet_bf16": S.datasheet_peak(device),
                                           "matmul_bf16_measured": None}}
    m = S.matmul_tflops(device)
    res["peak_tflops"]["matmul_bf16_measured"] = None if m is None else round(m, 1)
    peaks = {"datasheet_bf16": res["peak_tflops"]["datasheet_bf16"],
             "matmul_bf16_measured": res["peak_tflops"]["matmul_bf16_measured"]}
    json_path = out_dir / "gpu_check.json"

    def save() -> None:
        res["targets"] = targets(res)
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        json_path.write_text(json.dumps(res, indent=1))

    def say(what: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {what}", flush=True)

    failed = False
    say(f"{res['machine'].get('chip')}: preparing data from {tar}")
    with tempfile.TemporaryDirectory(prefix="flowergan-gpu-check-") as tmp:
        work = Path(tmp)
        src, shards = prepare_data(tar, work, args.quick, min(16, os.cpu_count() or 1))
        res["data"] = {"tar": str(tar), "images": sum(1 for _ in src.rglob("*.jpg")), "shards": str(shards)}
        save()
        # Each section leaves the later ones their share: e2e its seconds + 40, pytest PYTEST_RESERVE_S.
        pytest_reserve = PYTEST_RESERVE_S if args.pytest and not args.quick else 0.0
        e2e_deadline = deadline - pytest_reserve
        steps_deadline = e2e_deadline - (args.e2e_seconds + 40 if args.e2e else 0.0)
        if args.steps:
            say(f"train steps at batch {args.batches or args.batch_list}")
            res["train_step"] = train_steps(args, device, src, shards, flops, peaks, steps_deadline)
            peak_mem = [r.get("peak_mem_gib") for rows in res["train_step"].values() for r in rows.values()
                        if isinstance(r, dict) and r.get("peak_mem_gib") is not None]
            res["peak_gpu_mem_gib"] = max(peak_mem) if peak_mem else None
            save()
        if args.e2e:
            say("end to end: flowergan train")
            res["e2e"] = end_to_end(args, device, shards, work, out_dir, res.get("train_step", {}), e2e_deadline)
            failed |= res["e2e"]["rc"] != 0
            save()
        if args.pytest:
            say("pytest -m gpu")
            res["pytest"] = gpu_tests(out_dir, deadline)
            failed |= res["pytest"]["rc"] not in (0, 5)  # 5: nothing selected
            save()
    text = table(res)
    (out_dir / "gpu_check.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {json_path} ({res['elapsed_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
