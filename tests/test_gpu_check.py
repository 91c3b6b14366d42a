"""benchmarks/gpu_check.sh keeps working where CI runs (a CPU): `--device cpu --quick` end to end, its JSON complete.

The GPU session runs the same script without `--quick`; this test is what keeps that one command from rotting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _core import TensorStream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402  (benchmarks/ is not a package)
import gpu_steps  # noqa: E402

SHARED = Path(os.environ.get("FLOWERGAN_SHARED", ROOT.parent / "shared"))
FLOWERS5 = SHARED / "data" / "flowers5-128.tar"
MEASURED = ("tutorial_imagefolder", "tutorial_gpu_tensors", "flowergan_fp32", "flowergan_bf16", "flowergan_bf16_cl")


@pytest.mark.slow
def test_gpu_check_quick_on_the_cpu_writes_every_section(tmp_path):
    if not FLOWERS5.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{FLOWERS5} is missing (set FLOWERGAN_SHARED to the shared folder)")
        pytest.skip(f"{FLOWERS5} is not available (set FLOWERGAN_SHARED to the shared folder)")
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick", "--out", str(tmp_path),
                        "--data", str(FLOWERS5)], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.splitlines()[0].startswith(f"torch {torch.__version__}, CUDA ")  # versions first
    assert r.stdout.splitlines()[1].startswith("tested with torch ")
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["recipe"] == {"r1_gamma": 1.0, "r1_every": 1, "diffaugment": "color,translation"}
    assert res["pytest_plan"]["tests"] >= 8 and res["pytest_plan"]["reserve_s"] == 0  # --quick keeps none
    assert {"machine", "flops_per_image", "peak_tflops", "train_step", "e2e", "pytest", "targets"} <= set(res)
    assert res["machine"]["device"] == "cpu" and res["machine"]["torch"]

    # Useful work counted from the convolutions: the tutorial's step also computes D's weight gradients in G's step.
    f = res["flops_per_image"]
    assert f["tutorial_step"] - f["flowergan_step"] == pytest.approx(f["D_forward"])
    assert f["flowergan_step"] > 7 * f["D_forward"]

    rows = res["train_step"]["8"]
    assert rows["flowergan_cache"] == "none"  # data.cache = "auto" streams on the CPU
    for name in MEASURED:
        row = rows[name]
        assert row["img_per_s"] > 0 and row["tflops"] > 0, name
        assert row["ratio_vs_tutorial"] > 0 and row["ratio_vs_tutorial_gpu_tensors"] > 0, name
        assert len(row["rounds"]) == 1 and "pct_of_datasheet_bf16" in row, name
    assert rows["tutorial_imagefolder"]["ratio_vs_tutorial"] == 1.0
    assert "--quick" in rows["flowergan_bf16_cl_compile"]["skipped"]

    e2e = res["e2e"]
    assert e2e["rc"] == 0 and e2e["steps_done"] == 8 and e2e["img_per_s_steady"] > 0
    assert "jobs/flowers64.toml" in e2e["command"]
    t = res["pytest"]
    assert t["rc"] == 0 and t["failures"] == t["errors"] == 0
    assert t["skipped"] >= 8 and "tests/test_fast_path.py" in t["files"]  # gpu tests skip without CUDA
    assert res["targets"] == {"e2e_ge_5x_tutorial_b128": None, "e2e_ge_25000_img_s_b128": None}
    table = (tmp_path / "gpu_check.txt").read_text()
    assert "flowergan_bf16_cl" in table and "end to end" in table and "pytest -m gpu" in table


def test_a_failing_section_records_its_error_and_the_later_ones_run(capsys):
    res: dict = {}

    def broken() -> dict:
        raise RuntimeError("Found no NVIDIA driver")

    said: list[str] = []
    assert gpu_check.run_section(res, "train_step", broken, said.append) is True
    assert gpu_check.run_section(res, "e2e", lambda: {"rc": 0}, said.append) is False
    assert res["train_step"]["error"] == "RuntimeError: Found no NVIDIA driver"
    assert any("broken" in line for line in res["train_step"]["traceback"]) and res["e2e"] == {"rc": 0}
    assert said == ["train_step failed: RuntimeError: Found no NVIDIA driver"]
    res.update(machine={"date_utc": "today", "chip": "x", "torch": torch.__version__}, quick=True,
               peak_tflops={"datasheet_bf16": None, "matmul_bf16_measured": None},
               flops_per_image={"flowergan_step": 1e9}, pytest={"error": "SystemExit: 2"})
    text = gpu_check.table(res)
    assert "end to end:" in text and "pytest -m gpu: error SystemExit: 2" in text


def test_pytests_share_of_the_budget_comes_from_the_test_count():
    files = gpu_check.gpu_test_files()
    assert "tests/test_fast_path.py" in files and "tests/test_gpu_check.py" not in files
    n = gpu_check.count_gpu_tests(files)
    assert n is not None and n >= 8  # parametrised gpu tests count one each
    assert gpu_check.pytest_reserve_s(n) == gpu_check.PYTEST_START_S + gpu_check.PYTEST_PER_TEST_S * n
    assert gpu_check.pytest_reserve_s(2 * n) > gpu_check.pytest_reserve_s(n)


def test_versions_name_torch_cuda_and_cudnn_and_the_tested_ones(monkeypatch):
    line = gpu_check.versions()
    assert line.startswith(f"torch {torch.__version__}, CUDA ") and ", cuDNN " in line
    tested = gpu_check.tested_torch()
    assert tested.startswith("tested with torch ") and "2.11.0 (" in tested
    pinned = next(x.split("==")[1] for x in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
                  if x.startswith("torch=="))
    monkeypatch.setattr(torch, "__version__", pinned + "+cu130")
    assert f"torch {pinned} (CI's pin)" in gpu_check.tested_torch() and "is one of them" in gpu_check.tested_torch()
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    assert gpu_check.tested_torch().endswith("this torch (2.5.1) is NOT one of them")


def test_the_step_variants_train_the_jobs_recipe(monkeypatch):
    """The variant that wins section 1 is the one the end-to-end run trains: it must be timed with the job's R1
    and DiffAugment, not a bare step."""
    recipe = gpu_steps.Recipe.of_job(gpu_check.JOB)
    assert recipe == gpu_steps.Recipe(r1_gamma=1.0, r1_every=1, diffaugment="color,translation")
    calls: list[dict] = []
    real_step = gpu_steps.gan_step

    def spy(*args, **kwargs):
        calls.append({"augment": args[8] if len(args) > 8 else kwargs.get("augment"), **kwargs})
        return real_step(*args, **kwargs)

    monkeypatch.setattr(gpu_steps, "gan_step", spy)
    torch.set_num_threads(1)
    step = gpu_steps.flowergan_step(TensorStream(), gpu_steps.FLOWERGAN_VARIANTS[0], 8, torch.device("cpu"), 8,
                                    recipe)
    step()
    assert calls[0]["r1"] == 0.5 and calls[0]["augment"] is not None and calls[0]["D_r1"] is not None
