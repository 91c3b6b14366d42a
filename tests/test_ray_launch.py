"""What the Ray launcher assumes about the installed Ray, checked without starting a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_v1_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """RAY_TRAIN_V2_ENABLED=0 leaves ray.train without the V2 names ray_train.py uses: `flowergan train --ray`
    says so in one line and exits 2."""
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "0"}
    exe = Path(sys.executable).parent / "flowergan"
    r = subprocess.run([str(exe), "train", "--config", str(ROOT / "jobs" / "smoke.toml"), "--ray",
                        "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Train V2: unset RAY_TRAIN_V2_ENABLED or set it to 1" in lines[0], r.stderr


def test_ray_sets_the_nccl_environment_for_the_mixed_gpu_backend() -> None:
    """GPU workers use "cpu:gloo,cuda:nccl"; Ray sets TORCH_NCCL_ASYNC_ERROR_HANDLING (a stuck collective fails
    the worker instead of hanging it) only for backends it recognises as NCCL. This Ray must recognise ours."""
    ray_torch_config = pytest.importorskip("ray.train.torch.config")
    from flowergan.train.launch.ray_train import GPU_BACKEND

    assert ray_torch_config._is_backend_nccl(GPU_BACKEND)
    assert not ray_torch_config._is_backend_nccl("gloo")


def test_the_process_group_timeout_is_a_validated_cluster_field() -> None:
    """cluster.pg_timeout_s: what Ray Train's TorchConfig and torchrun's process group get (in-training evaluation
    on rank 0 holds the other ranks at a collective for that long at most)."""
    from flowergan.config import load_config

    cfg = load_config(None, ["cluster.pg_timeout_s=7200"])
    assert cfg.cluster.pg_timeout_s == 7200
    from flowergan.errors import UserError

    with pytest.raises(UserError, match=r"cluster.pg_timeout_s: 5 is out of range; allowed: >= 60"):
        load_config(None, ["cluster.pg_timeout_s=5"])


@pytest.mark.parametrize("features, expected", [("inception", "inception"), ("", ""),
                                                ("dinov2.pt", "{cwd}/dinov2.pt"),
                                                ("resnet18=w/r18.pt", "resnet18={cwd}/w/r18.pt")])
def test_eval_features_files_are_made_absolute_for_the_workers(tmp_path, monkeypatch, features, expected) -> None:
    """Ray workers run elsewhere: a relative eval.features file (alone or after NAME=) must travel absolute."""
    from flowergan.config import load_config
    from flowergan.train.launch.ray_train import resolve_paths

    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load_config(None, [f"eval.features={features}"] if features else []))
    assert cfg.eval.features == expected.format(cwd=tmp_path)
