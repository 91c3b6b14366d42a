"""The training stream on real shards: exact epochs across ranks and workers, determinism, resume, errors."""

from __future__ import annotations

import io
import itertools
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowergan.config import DataConfig
from flowergan.data import build_stream, read_manifest
from flowergan.data.ingest.synth import write_synthflowers
from flowergan.data.loader.plan import Plan
from flowergan.errors import UserError

N = 200


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """200 SynthFlowers at 16 px in 10 shards of 20."""
    out = tmp_path_factory.mktemp("synth16")
    write_synthflowers(out, n=N, size=16, seed=0, shard_size=20, progress=False)
    return out


@pytest.fixture(scope="module")
def truth(shards) -> dict[bytes, int]:
    """Every image's pixels (decoded with Pillow, independently of the stream) -> its label."""
    out = {}
    for rec in read_manifest(shards)["shards"]:
        with tarfile.open(shards / rec["name"]) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, data in members.items():
            if name.endswith(".png"):
                key = name[:-4]
                out[np.asarray(Image.open(io.BytesIO(data))).tobytes()] = int(members[key + ".cls"])
    assert len(out) == N  # all distinct
    return out


def cfg(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **{"workers": 0, "hflip": 0.0, "shuffle_buffer": 50, **kw})


def images(x: torch.Tensor) -> list[bytes]:
    """Undo the [-1, 1] scaling exactly and return each image's HWC uint8 bytes."""
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return [im.tobytes() for im in u8]


def take(it, n):
    return list(itertools.islice(it, n))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.parametrize("workers,cache", [(2, "none"), (0, "none"), (2, "memory")])
def test_every_image_once_per_epoch_across_ranks_with_right_labels(shards, truth, workers, cache):
    world, batch = 2, 10
    streams = [build_stream(cfg(shards, workers=workers, cache=cache), batch_size=batch, resolution=16, rank=r,
                            world_size=world, seed=5) for r in range(world)]
    assert all(s.num_samples == N and s.batches_per_epoch == N // (batch * world) == 10 for s in streams)
    assert streams[0].num_classes == 48
    epochs = [[], []]
    for s in streams:
        batches = take(iter(s), 2 * s.batches_per_epoch)  # equal counts: each rank yields 10 per epoch
        for e in range(2):
            for x, y in batches[e * 10:(e + 1) * 10]:
                assert x.shape == (batch, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
                assert float(x.min()) >= -1 and float(x.max()) <= 1
                for im, label in zip(images(x), y.tolist()):
                    assert truth[im] == label  # KeyError would mean a corrupted image
                    epochs[e].append(im)
    for e in range(2):
        assert len(epochs[e]) == N and set(epochs[e]) == set(truth)  # each exactly once
    assert epochs[0] != epochs[1]  # reshuffled between epochs


def test_uneven_sizes_drop_a_different_remainder_each_epoch(shards):
    s = build_stream(cfg(shards, workers=2), batch_size=7, resolution=16, rank=0, world_size=2, seed=1)
    assert s.batches_per_epoch == N // 14 == 14
    other = build_stream(cfg(shards, workers=2), batch_size=7, resolution=16, rank=1, world_size=2, seed=1)
    seen = [[], []]
    for stream in (s, other):
        for e, chunk in enumerate((slice(0, 14), slice(14, 28))):
            for x, _ in take(iter(stream), 28)[chunk]:
                seen[e] += images(x)
    for e in range(2):
        assert len(seen[e]) == len(set(seen[e])) == 14 * 14  # 196 distinct; 4 sit out
    assert set(seen[0]) != set(seen[1])


@pytest.mark.parametrize("workers,cache", [(2, "none"), (0, "none"), (0, "memory")])
def test_same_seed_same_batches_and_resume_is_exact(shards, workers, cache):
    c = cfg(shards, workers=workers, cache=cache, hflip=0.5, color_jitter=0.2)
    s = build_stream(c, batch_size=8, resolution=16, rank=1, world_size=2, seed=3)
    bpe = s.batches_per_epoch
    full = take(iter(s), 2 * bpe + 3)
    again = build_stream(c, batch_size=8, resolution=16, rank=1, world_size=2, seed=3)
    assert same(take(iter(again), len(full)), full)
    for k in (1, 5, bpe - 1, bpe, bpe + 2):
        assert same(take(again.iter_from(k), 3), full[k:k + 3]), k
    other_seed = build_stream(c, batch_size=8, resolution=16, rank=1, world_size=2, seed=4)
    assert not torch.equal(next(iter(other_seed))[0], full[0][0])
    other_rank = build_stream(c, batch_size=8, resolution=16, rank=0, world_size=2, seed=3)
    assert not torch.equal(next(iter(other_rank))[0], full[0][0])


def test_plan_splits_every_epoch_exactly_by_rank_and_worker():
    counts = (13, 7, 20, 1, 9, 15, 11, 4)
    n = sum(counts)
    for world, workers, batch in [(3, 2, 4), (2, 3, 5), (1, 1, 80)]:
        plans = [Plan(tuple(f"s{i}" for i in range(len(counts))), counts, batch, r, world, workers, 9, 0)
                 for r in range(world)]
        bpe = plans[0].batches_per_epoch
        assert bpe == max(1, n // (batch * world))
        for epoch in range(3):
            taken: list[tuple[int, int]] = []
            for p in plans:
                per_rank = 0
                for v in range(workers):
                    js = p.worker_batches(epoch, v)
                    assert all(j % workers == v and epoch * bpe <= j < (epoch + 1) * bpe for j in js)
                    pieces = p.pieces(epoch, v)
                    size = sum(b - a for _, a, b in pieces)
                    assert size == len(js) * batch
                    taken += [(shard, i) for shard, a, b in pieces for i in range(a, b)]
                    per_rank += size
                assert per_rank == bpe * batch  # the same number of batches on every rank
            assert len(taken) == len(set(taken)) == bpe * batch * world  # disjoint


def test_a_set_smaller_than_one_global_batch_still_streams(shards, truth):
    s = build_stream(cfg(shards), batch_size=150, resolution=16, rank=1, world_size=2, seed=0)
    assert s.batches_per_epoch == 1
    x, y = next(iter(s))
    assert x.shape[0] == 150 and all(truth[im] == label for im, label in zip(images(x), y.tolist()))
    sizes = [sum(b - a for _, a, b in s.plan.pieces(0, 0))]
    assert sizes == [150]


def test_flips_and_jitter_are_augmentation_only(shards):
    plain = next(iter(build_stream(cfg(shards, hflip=0.0), batch_size=16, resolution=16, seed=2)))
    flipped = next(iter(build_stream(cfg(shards, hflip=1.0), batch_size=16, resolution=16, seed=2)))
    assert torch.equal(flipped[0], plain[0].flip(3)) and torch.equal(flipped[1], plain[1])
    jit = next(iter(build_stream(cfg(shards, color_jitter=0.5), batch_size=16, resolution=16, seed=2)))[0]
    assert not torch.equal(jit, plain[0]) and float(jit.min()) >= -1 and float(jit.max()) <= 1
    assert float((jit - plain[0]).abs().mean()) < 0.5


def test_urls_pipe_and_fsspec_read_the_same_data(shards):
    import fsspec

    local = take(iter(build_stream(cfg(shards), batch_size=8, resolution=16)), 3)
    mem = fsspec.filesystem("memory")
    for p in shards.iterdir():
        mem.pipe(f"/flowers16/{p.name}", p.read_bytes())
    for path in (f"file://{shards}", f"pipe:cat {shards}/{{file}}", "memory://flowers16",
                 str(shards / "manifest.json")):
        got = take(iter(build_stream(cfg(path), batch_size=8, resolution=16)), 3)
        assert same(got, local), path


def test_clear_errors_instead_of_hangs(shards, tmp_path):
    with pytest.raises(UserError, match=r"10 shards but 3 ranks x 4 loader workers need at least 12"):
        build_stream(cfg(shards, workers=4), batch_size=4, resolution=16, rank=0, world_size=3)
    build_stream(cfg(shards, workers=4, cache="memory"), batch_size=4, resolution=16, rank=0, world_size=3)
    with pytest.raises(UserError, match=r"holds 16px images but the model is 64px.*flowergan data synth"):
        build_stream(cfg(shards), batch_size=4, resolution=64)
    with pytest.raises(UserError, match=r"nowhere: no manifest.json.*flowergan data synth --out"):
        build_stream(cfg(tmp_path / "nowhere"), batch_size=4, resolution=64)
    with pytest.raises(UserError, match="needs a {file} placeholder"):
        build_stream(cfg("pipe:cat x"), batch_size=4, resolution=64)


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_shard_is_named_in_one_line(shards, tmp_path, workers):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in shards.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    victim = broken / read_manifest(broken)["shards"][0]["name"]
    victim.write_bytes(victim.read_bytes()[:3000])
    s = build_stream(replace(cfg(broken), shuffle_buffer=0, workers=workers), batch_size=10, resolution=16)
    with pytest.raises(UserError, match=victim.name) as err:
        take(iter(s), 20)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_device_spelt_with_an_index_is_the_same_device(shards, cache):
    """The CPU twin of `torch.device("cuda") != torch.device("cuda:0")`: "cpu:0" names the device the cached set's
    tensors report as "cpu"; the stream must see them as the same place (not gather into pinned memory, which
    needs a GPU) and give the batches the plain spelling gives."""
    c = cfg(shards, cache=cache, hflip=0.5)
    plain = take(iter(build_stream(c, batch_size=8, resolution=16, seed=1, device=torch.device("cpu"))), 3)
    indexed = take(iter(build_stream(c, batch_size=8, resolution=16, seed=1, device=torch.device("cpu", 0))), 3)
    for (xp, yp), (xi, yi) in zip(plain, indexed, strict=True):
        assert torch.equal(xp, xi) and torch.equal(yp, yi)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cache,workers", [("none", 2), ("none", 0), ("memory", 0), ("device", 0)])
def test_cuda_batches_match_the_cpu_ones(shards, cache, workers):
    """On the GPU (pinned, uint8 over the bus, converted there) the batches equal the CPU stream's."""
    c = cfg(shards, workers=workers, cache=cache, hflip=0.5)
    cpu = take(iter(build_stream(c, batch_size=8, resolution=16, seed=1)), 4)
    gpu = take(iter(build_stream(c, batch_size=8, resolution=16, seed=1, device=torch.device("cuda"))), 4)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda and xg.is_contiguous()
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
