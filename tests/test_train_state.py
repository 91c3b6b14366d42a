"""TrainState and its checkpoint form: RNG states round-trip, each rank gets its own back, another world size
says so in one line, the best score survives a resume; the interval schedule."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _core import TensorStream, tiny_config

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.train.loop import train
from flowergan.train.schedule import Schedule
from flowergan.train.state import rng
from flowergan.train.state.checkpoints import load_state
from flowergan.train.state.train_state import new_state


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_capture_and_restore_cover_every_stream(one_thread) -> None:
    random.gauss(0, 1)  # leaves a cached gauss_next: part of Python's state
    state = rng.capture(torch.device("cpu"))
    first = _draws()
    rng.restore(state, torch.device("cpu"))
    assert _draws() == first
    assert rng.gather(state, torch.device("cpu"))[0].keys() == state.keys()  # bytes round trip, one rank


def _fresh(tmp_path, **kw):
    cfg = tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=4", "log.sample_every=4")
    return cfg, new_state(cfg, torch.device("cpu"), torch.preserve_format, best=float("inf"))


def test_each_rank_gets_its_own_rng_state_back(one_thread, tmp_path) -> None:
    cfg, state = _fresh(tmp_path)
    rng.reseed(0, 0)
    r0 = rng.capture()
    rng.reseed(0, 1)
    r1 = rng.capture()
    state.step, state.best = 4, 0.25
    ckpt = ckpt_io.save_state(tmp_path / "ck", state.state_dict(), [r0, r1], {"config": cfg.to_dict()})
    _, other = _fresh(tmp_path)
    assert load_state(ckpt, cfg, other, rank=1, world=2) is None
    assert torch.equal(torch.get_rng_state(), r1["torch"]) and not torch.equal(r0["torch"], r1["torch"])
    assert (other.step, other.best) == (4, 0.25)


def test_another_world_size_says_so_in_one_line(one_thread, tmp_path) -> None:
    cfg, state = _fresh(tmp_path)
    ckpt = ckpt_io.save_state(tmp_path / "ck", state.state_dict(), [rng.capture()], {"config": cfg.to_dict()})
    before = torch.get_rng_state()
    note = load_state(ckpt, cfg, state, rank=1, world=2)
    assert note is not None and "\n" not in note
    assert note.startswith("step-00000000 was saved by 1 rank(s) and resumes with 2: noise streams are re-derived")
    assert torch.equal(torch.get_rng_state(), before), "a foreign rank's RNG state must not be loaded"
    assert state.best == float("inf")  # no score yet: JSON null, the initial value kept


def test_resume_prints_the_note_and_continues(one_thread, tmp_path, capsys, monkeypatch) -> None:
    """A checkpoint saved without RNG states (as by another world size) resumes with a note, to the end."""
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=4", "train.checkpoint_every=4"), stream=TensorStream())
    ckpt = ckpt_io.list_checkpoints(run / "checkpoints")[-1]
    extra = torch.load(ckpt / ckpt_io.OPTIM, weights_only=True)
    extra["rng"] = [extra["rng"][0], extra["rng"][0]]  # "saved by 2 ranks"
    torch.save(extra, ckpt / ckpt_io.OPTIM)
    # As a 2-rank run would have recorded it (an edit without a new record is damage, which resume skips).
    (ckpt / ckpt_io.SUMS).write_text("".join(f"{ckpt_io.sha256_of(ckpt / n)}  {n}\n" for n in ckpt_io.FILES))
    capsys.readouterr()
    metrics = train(tiny_config(run, "train.steps=6", "train.checkpoint_every=4"), resume=True, stream=TensorStream())
    out = capsys.readouterr().out
    assert "note: step-00000004 was saved by 2 rank(s) and resumes with 1" in out
    assert metrics["Progress/images_seen"] == 6 * 8


def test_optimizer_state_takes_the_layout_of_the_params_it_resumes(one_thread, tmp_path) -> None:
    """A NCHW checkpoint (the CPU's) resumed with NHWC params and fused Adam (a GPU's "auto"): the Adam moments
    must be laid out as their params (CUDA's fused kernel refuses anything else; load_state_dict keeps the
    saved strides)."""
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=4", "train.checkpoint_every=4"), stream=TensorStream())
    cfg = tiny_config(run, "train.steps=8", "train.checkpoint_every=4", "train.channels_last=true", "optim.fused=on")
    state = new_state(cfg, torch.device("cpu"), torch.channels_last, best=float("inf"))
    load_state(ckpt_io.list_checkpoints(run / "checkpoints")[-1], cfg, state, rank=0, world=1)
    four_d = [p for net in (state.G, state.D) for p in net.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    for opt in (state.opt_g, state.opt_d):
        for p, moments in opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert moments[key].stride() == p.stride(), (key, tuple(p.shape))
    metrics = train(cfg, resume=True, stream=TensorStream())  # and the run goes on, fused, in NHWC
    assert metrics["Progress/images_seen"] == 8 * 8


def test_an_amp_off_checkpoint_resumes_with_fp16(one_thread, tmp_path) -> None:
    """An amp-off (or bf16) run saves an empty GradScaler state; an fp16 run resuming it starts a fresh scaler."""
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=4", "train.checkpoint_every=4", "train.amp=off"), stream=TensorStream())
    metrics = train(tiny_config(run, "train.steps=6", "train.checkpoint_every=4", "train.amp=fp16"), resume=True,
                    stream=TensorStream())
    assert metrics["Progress/images_seen"] == 6 * 8


@pytest.mark.parametrize("step, due", [
    (1, set()), (2, {"log"}), (3, set()), (4, {"log", "epoch_end", "sample"}),
    (5, {"log", "evaluate", "checkpoint"}), (6, {"log", "checkpoint"}), (8, {"log", "epoch_end", "sample"}),
    (10, {"log", "evaluate", "checkpoint", "sample"})])
def test_schedule_says_what_is_due(step: int, due: set[str]) -> None:
    s = Schedule(steps=10, log_every=2, sample_every=4, eval_every=5, checkpoint_every=6, d_steps=1,
                 batches_per_epoch=4)
    got = s.at(step)
    names = {"log", "epoch_end", "sample", "evaluate", "checkpoint"}
    assert {n for n in names if getattr(got, n)} == due


def test_checkpoints_of_the_single_rank_format_still_resume_exactly(one_thread) -> None:
    """Before every rank's state was saved, optim.pt held one nested dict (this is how it was built)."""
    random.gauss(0, 1)
    _kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    legacy = {"torch": torch.get_rng_state(),
              "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)},
              "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                         "gauss_next": gauss_next}}
    first = _draws()
    rng.restore(rng.from_legacy(legacy))
    assert _draws() == first


def test_a_misspelt_fault_point_or_action_is_refused(monkeypatch) -> None:
    """The fault hook names what it does not know instead of silently never firing (a vacuous restart test)."""
    from flowergan.train.faults import maybe_inject_fault

    monkeypatch.setenv("FLOWERGAN_FAULT_STEP", "3")
    maybe_inject_fault(2, 0)  # another step: not armed, nothing checked
    monkeypatch.setenv("FLOWERGAN_FAULT_POINT", "saev")
    with pytest.raises(ValueError, match="FLOWERGAN_FAULT_POINT='saev': expected one of"):
        maybe_inject_fault(3, 0)
    monkeypatch.setenv("FLOWERGAN_FAULT_POINT", "saved")
    monkeypatch.setenv("FLOWERGAN_FAULT_ACTION", "explode")
    with pytest.raises(ValueError, match="FLOWERGAN_FAULT_ACTION='explode'"):
        maybe_inject_fault(3, 0, point="saved")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_perturb_fault_nudges_one_weight_in_either_layout(monkeypatch, memory_format) -> None:
    """`perturb` changes exactly one element of G's first weight by 1e-3, also when that weight is NHWC (a GPU's
    layout, where a flat view of it does not exist)."""
    from flowergan.models import Generator
    from flowergan.train.faults import maybe_inject_fault

    G = Generator(8, 8, 16).to(memory_format=memory_format)
    before = next(G.parameters()).detach().clone()
    monkeypatch.setenv("FLOWERGAN_FAULT_STEP", "3")
    monkeypatch.setenv("FLOWERGAN_FAULT_ACTION", "perturb")
    maybe_inject_fault(3, 0, nets={"G": G})
    diff = next(G.parameters()).detach() - before
    assert (diff != 0).sum() == 1 and diff.sum().item() == pytest.approx(1e-3)
