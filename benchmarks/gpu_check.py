"""The GPU check: train-step img/s (tutorial vs flowergan), end-to-end `flowergan train`, pytest -m gpu, one JSON.

Run it through `benchmarks/gpu_check.sh` (which installs carried wheels and sets PYTHONPATH). Sections run in
this order, each under the time left of `--budget-s`, and the JSON is rewritten after each, so a run cut short
still leaves what it measured:

0. the torch, CUDA and cuDNN versions (printed first), and how many gpu tests section 3 will run (its time is
   kept for it from that count);
1. train steps (gpu_steps.py) at each `--batches` size: the tutorial (ImageFolder loader; GPU tensors) and
   flowergan (fp32, bf16, + channels_last, + torch.compile with CUDA graphs) training the job's recipe (R1 and
   DiffAugment, as jobs/flowers64.toml sets them), img/s, ratios to the tutorial, TFLOP/s of useful work against
   the chip's bf16 peak (datasheet and a measured bf16 matrix product);
2. end to end: `python -m flowergan train --config jobs/flowers64.toml` for `--e2e-seconds` at batch 128 (the
   largest batch measured at most 128), from flowers5 shards, with the fastest flowergan set-up of step 1;
3. `pytest -m gpu` over the test files that hold gpu tests.

A section that fails records its error (type, message, the end of the traceback) in its place in the JSON and the
later sections still run; the exit status is 1 then.

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
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
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
JOB = ROOT / "jobs" / "flowers64.toml"  # what the end-to-end run trains, and whose recipe the step variants train
# Time kept for `pytest -m gpu`: start-up plus a share per collected test (the compile tests, a minute or so each
# on a cold inductor cache, take most of it; an estimate until a GPU run measures it).
PYTEST_START_S, PYTEST_PER_TEST_S = 20.0, 8.0


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


# The torch versions the test suite has passed under, besides CI's pin (.ci/constraints.txt, the whole suite): the
# GPU machine's torch 2.11 / torchvision 0.26 in a second venv on a CPU (every test not marked slow, and the slow
# compile, torchrun, gpu_check, sample and demo tests). pyproject's lower bound, torch >= 2.4, is not tested.
ALSO_TESTED_TORCH = {"2.11.0": "torchvision 0.26, on a CPU, 2026-12-06"}


def tested_torch() -> str:
    """Which torch versions the suite passed under, and whether the running one is among them."""
    pins = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    ci = next((line.split("==")[1] for line in pins if line.lower().startswith("torch==")), "unknown")
    running = torch.__version__.split("+")[0]
    known = running == ci or running in ALSO_TESTED_TORCH
    also = ", ".join(f"{v} ({how})" for v, how in ALSO_TESTED_TORCH.items())
    return (f"tested with torch {ci} (CI's pin) and {also}; this torch ({running}) "
            f"{'is one of them' if known else 'is NOT one of them'}")


def versions() -> str:
    """torch, CUDA and cuDNN as this process sees them: the first line of the check's output."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, cuDNN {cudnn or 'none'}, "
            f"python {platform.python_version()}")


def run_section(res: dict[str, Any], name: str, section: Callable[[], Any], say: Callable[[str], None]) -> bool:
    """res[name] = section(); a section that raises gets its error recorded there instead (type and message, the
    end of the traceback), so the later sections still run. True when it raised."""
    try:
        res[name] = section()
        return False
    except (Exception, SystemExit) as e:  # any failure of one section is that section's result, SystemExit too
        res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc().splitlines()[-12:]}
        say(f"{name} failed: {type(e).__name__}: {e}")
        return True


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
    """Every variant at every batch size (flowergan's with the job's recipe); ratios to both tutorial variants of
    the same rounds. A batch size that fails records its error and the next one still runs."""
    out: dict[str, Any] = {}
    last = 0.0  # seconds the previous batch size took: the next one starts only if about as much time is left
    for batch in sorted(args.batch_list, key=lambda b: (b != 128, b)):  # 128 first: the targets are at 128
        if time.monotonic() + last > deadline:
            out[str(batch)] = {"skipped": "out of time (--budget-s)"}
            continue
        t0 = time.monotonic()
        run_section(out, str(batch), lambda b=batch: _one_batch(args, device, src, shards, flops, peaks, b),
                    lambda what: print(f"  batch {what}", flush=True))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        last = time.monotonic() - t0
    return {str(b): out[str(b)] for b in args.batch_list}


def _one_batch(args: argparse.Namespace, device: torch.device, src: Path, shards: Path, flops: dict[str, float],
               peaks: dict[str, float | None], batch: int) -> dict[str, Any]:
    """The rows of one batch size."""
    quick_cpu = args.quick and device.type == "cpu"
    steps: dict[str, S.Step] = {TUTORIAL_IF: S.tutorial_imagefolder(src, batch, args.workers, device, args.width)}
    first = next(iter(torch.utils.data.DataLoader(_imagefolder(src), batch_size=batch)))[0]
    steps[TUTORIAL_T] = S.tutorial_tensors(first, device, args.width)
    stream = S.flowergan_stream(shards, batch, args.workers, device)
    skipped: dict[str, str] = {}
    for v in S.FLOWERGAN_VARIANTS:
        if v.compile and quick_cpu:
            skipped[v.name] = "not run by --quick on the CPU (inductor takes about a minute to compile there)"
            continue
        steps[v.name] = S.flowergan_step(stream, v, batch, device, args.width, args.recipe)
    rows = S.measure(steps, batch, device, rounds=args.rounds, seconds=args.round_seconds,
                     warmup=1 if args.quick else 5, min_steps=2 if args.quick else 5)
    for row in rows.values():
        _with_rates(row, flops["flowergan_step"], peaks)
        for key, base in (("ratio_vs_tutorial", TUTORIAL_IF), ("ratio_vs_tutorial_gpu_tensors", TUTORIAL_T)):
            row[key] = round(S.paired_ratio(row["rounds"], rows[base]["rounds"]), 3)
    rows.update({k: {"skipped": why} for k, why in skipped.items()})
    return {"flowergan_cache": stream.cache, **rows}


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
    cmd = [sys.executable, "-m", "flowergan", "train", "--config", str(JOB),
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


def gpu_test_files() -> list[str]:
    """The test files that mark gpu tests (the others need packages the GPU machine lacks, such as ray)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text())


def count_gpu_tests(files: list[str]) -> int | None:
    """How many tests `pytest -m gpu` will run (collected, not run), or None if collecting failed."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", out)
    return int(found.group(1)) if found else sum(1 for line in out.splitlines() if "::" in line) or None


def pytest_reserve_s(n_tests: int | None) -> float:
    """Seconds kept for `pytest -m gpu` from its test count (the old fixed guess, 120 s, when it is unknown)."""
    return 120.0 if n_tests is None else PYTEST_START_S + PYTEST_PER_TEST_S * n_tests


def gpu_tests(out_dir: Path, deadline: float) -> dict[str, Any]:
    """pytest -m gpu over the test files that mark gpu tests."""
    files = gpu_test_files()
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
    """The short table: img/s, ratio to the tutorial (ImageFolder / GPU tensors), TFLOP/s, % of the bf16 peak;
    a section that failed shows its error in its place."""
    m = res["machine"]
    recipe = res.get("recipe") or {}
    lines = [f"gpu_check {m['date_utc']} UTC: {m.get('chip')}, {res.get('versions', 'torch ' + m['torch'])}"
             f"{' (quick)' if res['quick'] else ''}",
             f"bf16 peak: datasheet {res['peak_tflops']['datasheet_bf16']} TFLOP/s, measured matmul "
             f"{res['peak_tflops']['matmul_bf16_measured']} TFLOP/s; useful work "
             f"{res['flops_per_image']['flowergan_step'] / 1e9:.2f} GFLOP per image per step (the bare DCGAN step)",
             f"flowergan rows train {JOB.name}'s recipe: R1 gamma {recipe.get('r1_gamma')} every "
             f"{recipe.get('r1_every')} step(s), DiffAugment {recipe.get('diffaugment')!r}",
             f"{'batch':>5} {'variant':<28} {'img/s':>9} {'x tut':>7} {'x tutGPU':>8} {'TFLOP/s':>8} {'%peak':>6}"]
    steps = res.get("train_step") or {}
    if "error" in steps:
        lines.append(f"train steps: error {steps['error'][:200]}")
    for batch, rows in _measured_or_failed(steps).items():
        if "error" in rows:
            lines.append(f"{batch:>5} {'error':<28} {rows['error'][:90]}")
            continue
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
    if e and "error" in e:
        lines.append(f"end to end: error {e['error'][:200]}")
    elif e:
        lines.append(f"end to end: {e.get('variant')} batch {e.get('batch')}, {e.get('steps_done', 0)} steps in "
                     f"{e.get('wall_s')} s (rc {e.get('rc')}): steady {e.get('img_per_s_steady')} img/s, overall "
                     f"{e.get('img_per_s_overall')} img/s, x tutorial {e.get('ratio_vs_tutorial')}, peak GPU memory "
                     f"{e.get('peak_gpu_mem_gib_nvidia_smi')} GiB (nvidia-smi)")
    t = res.get("pytest")
    if t and "error" in t:
        lines.append(f"pytest -m gpu: error {t['error'][:200]}")
    elif t:
        lines.append(f"pytest -m gpu: {t.get('summary')} (rc {t.get('rc')}, {t.get('seconds')} s of "
                     f"{res.get('pytest_plan', {}).get('reserve_s')} s kept)"
                     + (f"; failed: {', '.join(t['failed_names'])}" if t.get("failed_names") else ""))
    for name in ("data", "peaks"):
        if isinstance(res.get(name), dict) and "error" in res[name]:
            lines.append(f"{name}: error {res[name]['error'][:200]}")
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
    print(versions(), flush=True)  # first: a failure further on is read against these
    print(tested_torch(), flush=True)
    try:  # "cuda" becomes "cuda:N": the device the stream's and the models' tensors report
        device = pick_device(args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.batch_list = [int(b) for b in (args.batches or ("8" if args.quick else "64,128,512")).split(",")]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.round_seconds = args.round_seconds or (0.3 if args.quick else 1.0)
    args.e2e_seconds = args.e2e_seconds or (4.0 if args.quick else 120.0)
    args.recipe = S.Recipe.of_job(JOB)
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
    res: dict[str, Any] = {"schema": 2, "quick": args.quick, "versions": versions(), "tested": tested_torch(),
                           "machine": machine(device),
                           "batches": args.batch_list, "recipe": vars(args.recipe), "flops_per_image": flops,
                           "peak_tflops": {"datasheet_bf16": S.datasheet_peak(device),
                                           "matmul_bf16_measured": None}}
    json_path = out_dir / "gpu_check.json"

    def save() -> None:
        res["targets"] = targets(res)
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        json_path.write_text(json.dumps(res, indent=1))

    def say(what: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {what}", flush=True)

    failed = run_section(res, "peaks", lambda: _measure_peak(res, device), say)
    peaks = {"datasheet_bf16": res["peak_tflops"]["datasheet_bf16"],
             "matmul_bf16_measured": res["peak_tflops"]["matmul_bf16_measured"]}
    # pytest's share of the budget, from how many tests it will run; --quick keeps none (its budget is a guard).
    n_tests = count_gpu_tests(gpu_test_files()) if args.pytest else 0
    reserve = pytest_reserve_s(n_tests) if args.pytest and not args.quick else 0.0
    res["pytest_plan"] = {"tests": n_tests, "reserve_s": reserve}
    say(f"{res['machine'].get('chip')}: {n_tests} gpu tests to run, {reserve:.0f} s kept for them; "
        f"preparing data from {tar}")
    with tempfile.TemporaryDirectory(prefix="flowergan-gpu-check-") as tmp:
        work = Path(tmp)
        failed |= run_section(res, "data", lambda: _data(tar, work, args.quick), say)
        save()
        have_data = "error" not in res["data"]
        src, shards = (Path(res["data"]["src"]), Path(res["data"]["shards"])) if have_data else (None, None)
        # Each section leaves the later ones their share: e2e its seconds + 40, pytest its reserve.
        e2e_deadline = deadline - reserve
        steps_deadline = e2e_deadline - (args.e2e_seconds + 40 if args.e2e else 0.0)
        if args.steps and src is not None and shards is not None:
            say(f"train steps at batch {args.batches or args.batch_list}")
            failed |= run_section(res, "train_step", lambda: train_steps(args, device, src, shards, flops, peaks,
                                                                         steps_deadline), say)
            failed |= any("error" in rows for rows in (res["train_step"] or {}).values() if isinstance(rows, dict))
            res["peak_gpu_mem_gib"] = _peak_mem(res.get("train_step") or {})
            save()
        if args.e2e and shards is not None:
            say("end to end: flowergan train")
            failed |= run_section(res, "e2e", lambda: end_to_end(args, device, shards, work, out_dir,
                                                                 _measured(res.get("train_step")), e2e_deadline), say)
            failed |= res["e2e"].get("rc", 1) != 0
            save()
        if args.pytest:
            say("pytest -m gpu")
            failed |= run_section(res, "pytest", lambda: gpu_tests(out_dir, deadline), say)
            failed |= res["pytest"].get("rc", 1) not in (0, 5)  # 5: nothing selected
            save()
    save()
    text = table(res)
    (out_dir / "gpu_check.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {json_path} ({res['elapsed_s']} s)")
    return 1 if failed else 0


def _measure_peak(res: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The bf16 matrix product's rate, into res["peak_tflops"]."""
    m = S.matmul_tflops(device)
    res["peak_tflops"]["matmul_bf16_measured"] = None if m is None else round(m, 1)
    return {"ok": True}


def _data(tar: Path, work: Path, quick: bool) -> dict[str, Any]:
    src, shards = prepare_data(tar, work, quick, min(16, os.cpu_count() or 1))
    return {"tar": str(tar), "images": sum(1 for _ in src.rglob("*.jpg")), "src": str(src), "shards": str(shards)}


def _measured(steps: Any) -> dict[str, Any]:
    """The train-step rows of the batch sizes that were measured (a failed section or batch size left out)."""
    if not isinstance(steps, dict) or "error" in steps:
        return {}
    return {b: rows for b, rows in steps.items() if isinstance(rows, dict) and "error" not in rows}


def _measured_or_failed(steps: dict[str, Any]) -> dict[str, Any]:
    """The rows of each batch size, or their error (nothing when the whole section failed)."""
    return {} if "error" in steps else {b: rows for b, rows in steps.items() if isinstance(rows, dict)}


def _peak_mem(steps: dict[str, Any]) -> float | None:
    peak_mem = [r.get("peak_mem_gib") for rows in _measured(steps).values() for r in rows.values()
                if isinstance(r, dict) and r.get("peak_mem_gib") is not None]
    return max(peak_mem) if peak_mem else None


if __name__ == "__main__":
    sys.exit(main())
