"""The extractor's fp32 guard: IEEE fp32 for cuDNN convolutions and the logits matmul while it runs, on torch's
fp32_precision API where torch has it (reading the deprecated allow_tf32 flags raises once that API was used),
and everything restored afterwards."""

from __future__ import annotations

import pytest
import torch
from flowergan_eval.features import full_fp32

conv, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
NEW_API = hasattr(getattr(conv, "conv", None), "fp32_precision")


@pytest.fixture
def restore_flags():
    saved = (conv.conv.fp32_precision, matmul.fp32_precision) if NEW_API else (conv.allow_tf32, matmul.allow_tf32)
    yield
    if NEW_API:
        conv.conv.fp32_precision, matmul.fp32_precision = saved
    else:
        conv.allow_tf32, matmul.allow_tf32 = saved


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has no fp32_precision API")
def test_guard_uses_fp32_precision_and_restores_it(restore_flags) -> None:
    # A training run (or the user) chose TF32 through the new API: the old flags would now raise on reading.
    conv.conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
    with pytest.raises(RuntimeError):
        _ = matmul.allow_tf32
    with full_fp32(torch.device("cuda")):  # the flags are process-wide: settable without a GPU
        assert (conv.conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")


def test_guard_leaves_cpu_runs_alone(restore_flags) -> None:
    before = (conv.conv.fp32_precision, matmul.fp32_precision) if NEW_API else (conv.allow_tf32, matmul.allow_tf32)
    with full_fp32(torch.device("cpu")):
        now = (conv.conv.fp32_precision, matmul.fp32_precision) if NEW_API else (conv.allow_tf32, matmul.allow_tf32)
        assert now == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_extractor_on_the_gpu_matches_fp32_on_the_cpu(tmp_path, restore_flags) -> None:
    """With TF32 switched on for matmuls and convolutions, the GPU extractor still computes in IEEE fp32: its
    pool3 features and logits agree with the CPU's to fp32 rounding (TF32 would be ~1e-3 off)."""
    from flowergan_eval import weights as W
    from flowergan_eval.features import InceptionExtractor, random_inception_weights

    path = random_inception_weights(tmp_path / "w.pth", seed=0)
    sd = W.load_state_dict(path)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pool_cpu, logits_cpu = InceptionExtractor(sd, device="cpu", fast=False)(images)
    if NEW_API:
        conv.conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
    else:
        conv.allow_tf32, matmul.allow_tf32 = True, True
    pool, logits = InceptionExtractor(sd, device="cuda", fast=False)(images)
    torch.testing.assert_close(pool.cpu(), pool_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits.cpu(), logits_cpu, rtol=1e-4, atol=1e-4)
