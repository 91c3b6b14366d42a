"""train.compile: torch.compile of G and D keeps exact resume; CUDA-graph modes on CUDA, "default" elsewhere.

Measured on the 2-core CPU machine (torch 2.14, inductor's C++ backend, 8 steps of the tiny DCGAN): compiled
N steps and compiled N/2 + resume + N/2 give bit-identical G, G_ema and D; compiled against eager differs by
up to 6e-4 in a weight after 8 steps (inductor fuses and reorders float arithmetic, Adam carries it on).
A cold compile takes about a minute on 2 busy cores (later runs hit inductor's on-disk cache), hence `slow`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from _core import TensorStream, tiny_config

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts.checkpoint import read_generator
from flowergan.config import ConfigError, TrainConfig, load_config
from flowergan.train.gan.compiling import compile_mode, compile_nets
from flowergan.train.loop import train

# The recipe every job file ships: R1 on reals, DiffAugment, EMA of G (a bare step hid issue 25's first fault).
RECIPE = ("train.r1_gamma=1.0", "train.diffaugment=color,translation", "train.ema=true")


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile through AOTAutograd (what inductor runs on), without inductor's C++ build: `eager` would skip
    AOTAutograd and with it the faults inductor meets (no double backward through compiled code)."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    yield
    torch._dynamo.reset()


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| over all weights and statistics together, an L2 norm (one outlying element cannot dominate it as a
    max can); step counters such as BatchNorm's num_batches_tracked are left out."""
    keys = [k for k in a if a[k].is_floating_point()]
    return torch.stack([((a[k].float() - b[k].float()) ** 2).sum() for k in keys]).sum().sqrt().item()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    nets = {"G": read_generator(run, ema=False)[0], "G_ema": read_generator(run, ema=True)[0],
            "D": ckpt_io.read_discriminator(run)[0]}
    return {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}


def _runs(tmp_path: Path, *extra: str, device: str = "cpu") -> tuple[dict, dict, dict]:
    """(8 steps straight, 4 + resume + 4, the 4-step checkpoint) of the tiny DCGAN with `extra` settings."""
    common = ("train.checkpoint_every=4", "log.every=4", f"train.device={device}", *extra)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(straight, "train.steps=8", *common), stream=TensorStream())
    train(tiny_config(split, "train.steps=4", *common), stream=TensorStream())
    half = _weights(split / "checkpoints" / "step-00000004")
    train(tiny_config(split, "train.steps=8", *common), resume=True, stream=TensorStream())
    return _weights(straight), _weights(split), half


@pytest.mark.parametrize("mode,device,expected", [("reduce-overhead", "cpu", "default"),
                                                  ("max-autotune", "cpu", "default"),
                                                  ("max-autotune-no-cudagraphs", "cpu", "max-autotune-no-cudagraphs"),
                                                  ("reduce-overhead", "cuda", "reduce-overhead"),
                                                  ("default", "cuda", "default")])
def test_cuda_graph_modes_run_as_default_off_cuda(mode, device, expected):
    assert compile_mode(TrainConfig(compile=True, compile_mode=mode), torch.device(device)) == expected


def test_compile_nets_wraps_only_when_asked():
    G, D = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert compile_nets(G, D, TrainConfig(compile=False), torch.device("cpu")) == (G, D)
    G_c, D_c = compile_nets(G, D, TrainConfig(compile=True, compile_mode="reduce-overhead"), torch.device("cpu"))
    assert getattr(G_c, "_orig_mod", None) is G and getattr(D_c, "_orig_mod", None) is D  # no CUDA-graph step mark


def test_compile_mode_is_validated():
    with pytest.raises(ConfigError, match="train.compile_mode: 'fast' is not allowed; choose one of: default, "
                                          "reduce-overhead"):
        load_config(None, ["train.compile_mode=fast"])


@pytest.mark.usefixtures("one_thread")
def test_compile_with_the_jobs_recipe_runs_through_aot_autograd(tmp_path, aot_eager):
    """R1's double backward never goes through the compiled D; resume stays exact and the run matches eager."""
    straight, split, half = _runs(tmp_path, "train.compile=true", *RECIPE)
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    eager, _, _ = _runs(tmp_path / "eager", *RECIPE)
    moved, off = _rel(straight, half), _rel(eager, straight)
    assert moved > 0 and off < 1e-3 * moved, f"compiled vs eager {off:.2e}; 4 steps moved the weights {moved:.2e}"


@pytest.mark.slow
def test_compiled_resume_is_bit_identical_on_the_cpu(tmp_path):
    """torch.compile (inductor, default mode): N steps == N/2 + resume + N/2, bit for bit, and close to eager."""
    straight, split, half = _runs(tmp_path, "train.compile=true")
    assert straight.keys() == split.keys()
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    assert any(not torch.equal(straight[k], half[k]) for k in straight)  # steps 5-8 changed the weights
    eager, _, _ = _runs(tmp_path / "eager")
    moved = max((eager[k].float() - half[k].float()).abs().max().item() for k in eager)
    off = max((eager[k].float() - straight[k].float()).abs().max().item() for k in eager)
    assert off < 0.5 * moved, f"compiled weights differ from eager by {off:.2e}; 4 steps moved them {moved:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_train_and_resume(tmp_path):
    """reduce-overhead (CUDA graph trees) with the jobs' recipe in the real loop: resume continues the same run,
    close to eager. Its CPU twin is test_compile_with_the_jobs_recipe_runs_through_aot_autograd.

    GPU convolutions' backward kernels add with atomics, cuDNN autotuning picks kernels per run and bf16 rounds
    what they sum, so single weights differ from run to run: runs are compared by L2 norms over all weights, with
    the distance 4 training steps move them as the yardstick (a max over elements, the CPU's calibration, would be
    flaky); the test prints whether they were identical.
    """
    extra = ("train.compile=true", "train.compile_mode=reduce-overhead", "train.amp=bf16", *RECIPE)
    straight, split, half = _runs(tmp_path, *extra, device="cuda")
    eager, _, _ = _runs(tmp_path / "eager", "train.amp=bf16", *RECIPE, device="cuda")
    moved = _rel(straight, half)
    print(f"CUDA graphs: resume bit-identical: {all(torch.equal(straight[k], split[k]) for k in straight)}; "
          f"|straight - resumed| {_rel(straight, split):.2e}, |compiled - eager| {_rel(straight, eager):.2e}, "
          f"4 steps moved {moved:.2e} (L2 over all weights)")
    assert moved > 0
    assert _rel(straight, split) < 0.1 * moved
    assert _rel(straight, eager) < 0.5 * moved
