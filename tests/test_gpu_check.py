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

ROOT = Path(__file__).resolve().parents[1]
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
    res = json.loads((tmp_path / "gpu_check.json").read_text())
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
