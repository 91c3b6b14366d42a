"""model.conditional: concat and projection G and D, the rules that refuse what makes no sense, fake classes from
the rank's stream, and conditional runs through the real loop (exact resume, EMA, AMP, compile, sample grids)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from _core import ClassStream, tiny_config
from PIL import Image

from flowergan.artifacts import checkpoint as ckpt_io
from flowergan.artifacts.checkpoint import read_generator
from flowergan.config import ConfigError, ModelConfig, load_config, with_classes
from flowergan.errors import UserError
from flowergan.generation import generate, recompute_bn_stats
from flowergan.models import ConditionalBatchNorm2d, Discriminator, Generator, build_models
from flowergan.train.gan.labels import FakeClasses
from flowergan.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
K = 3


def _cfg(resolution: int = 64, **options) -> ModelConfig:
    return dataclasses.replace(ModelConfig(), resolution=resolution, nz=16, ngf=8, ndf=8, num_classes=K, **options)


@pytest.mark.parametrize("resolution", [64, 128])
@pytest.mark.parametrize("options", [{"conditional": "concat"}, {"conditional": "projection"},
                                     {"conditional": "concat", "d_pack": 2, "d_mbstd": 2},
                                     {"conditional": "projection", "spectral_norm": True, "d_head": "dense",
                                      "d_mbstd": 4}], ids=str)
def test_conditional_shapes_and_the_label_matters(resolution: int, options: dict) -> None:
    torch.manual_seed(0)
    G, D = build_models(_cfg(resolution, **options))
    z, y = torch.randn(8, 16), torch.arange(8) % K
    x = G(z, y)
    assert x.shape == (8, 3, resolution, resolution)
    logits = D(x, y)
    assert logits.shape == (8 // options.get("d_pack", 1),)
    G.eval()  # eval-mode BN: each image depends on its own z and y only
    assert torch.equal(G(z[:1], y[:1]), G(z[:1], y[:1]))
    assert not torch.allclose(G(z[:1], torch.tensor([0])), G(z[:1], torch.tensor([1])))
    assert not torch.allclose(D(x, y), D(x, (y + 1) % K))
    with pytest.raises(ValueError, match="needs class labels"):
        G(z)


def test_projection_logit_is_psi_plus_the_inner_product_with_the_class_embedding() -> None:
    torch.manual_seed(0)
    D = Discriminator(8, 16, num_classes=K, conditional="projection")
    x = torch.randn(4, 3, 16, 16)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.full((4,), 2)
    phi = D.features(x).sum(dim=(2, 3))
    # The same batch in both calls (BatchNorm's batch statistics alike): the logits differ by <e(y0) - e(y1), phi>.
    want = ((D.embed.weight[0] - D.embed.weight[2]) * phi).sum(dim=1)
    assert torch.allclose(D(x, y0) - D(x, y1), want, atol=1e-5)


def test_projection_g_has_a_gain_and_bias_per_class_and_no_plain_batchnorm() -> None:
    G = Generator(16, 8, 16, num_classes=K, conditional="projection")
    cbn = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(cbn) == 2 and all(m.gain.weight.shape[0] == K and not m.bn.affine for m in cbn)
    assert all(torch.equal(m.bias.weight, torch.zeros_like(m.bias.weight)) for m in cbn)
    assert abs(cbn[0].gain.weight.mean().item() - 1.0) < 0.01  # DCGAN's BatchNorm init, per class


def test_the_unconditional_nets_have_no_class_parts() -> None:
    G, D = build_models(ModelConfig())
    assert G.num_classes == 0 and not hasattr(G, "embed") and not hasattr(D, "embed")
    assert not any(isinstance(m, (ConditionalBatchNorm2d, torch.nn.Embedding)) for m in [*G.modules(), *D.modules()])


def test_a_conditional_model_without_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="model.num_classes"):
        build_models(dataclasses.replace(ModelConfig(), conditional="concat"))


@pytest.mark.parametrize("overrides,names", [
    (["model.conditional=projection", "model.d_pack=2"], ["model.d_pack", "model.conditional"]),
    (["model.num_classes=5"], ["model.num_classes", "model.conditional"]),
    (["model.conditional=concat", "model.num_classes=1"], ["model.num_classes"]),
    (["model.conditional=concat", "model.num_classes=3", "model.class_names=a,b"], ["model.class_names"]),
])
def test_combinations_that_make_no_sense_are_one_line_naming_the_fields(overrides, names) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in names), str(e.value)


def test_classes_come_from_the_data_and_a_set_without_classes_is_refused() -> None:
    cfg = load_config(None, ["model.conditional=concat"])
    resolved = with_classes(cfg, ["daisy", "rose", "tulip"], "data.path x")
    assert resolved.model.num_classes == 3 and resolved.model.class_names == "daisy,rose,tulip"
    assert cfg.model.num_classes == 0  # the original is left alone
    with pytest.raises(ConfigError, match=r"model.conditional = 'concat' needs a data set with classes.*1 class"):
        with_classes(cfg, ["flat"], "data.path x")
    with pytest.raises(ConfigError, match="model.num_classes = 4 but data.path x has 3"):
        with_classes(load_config(None, ["model.conditional=concat", "model.num_classes=4"]), ["a", "b", "c"],
                     "data.path x")
    unconditional = load_config(None, [])
    assert with_classes(unconditional, ["flat"], "x") is unconditional


def test_fake_classes_follow_the_data_or_are_uniform_from_the_torch_stream() -> None:
    torch.manual_seed(0)
    data = FakeClasses([1, 0, 3], "data", torch.device("cpu"))
    y = data.draw(40_000)
    freq = torch.bincount(y, minlength=3).double() / len(y)
    assert freq[1] == 0 and abs(freq[0] - 0.25) < 0.01 and abs(freq[2] - 0.75) < 0.01
    uniform = FakeClasses([1, 0, 3], "uniform", torch.device("cpu"))
    freq = torch.bincount(uniform.draw(30_000), minlength=3).double() / 30_000
    assert all(abs(f - 1 / 3) < 0.015 for f in freq)
    torch.manual_seed(5)
    a = data.draw(16)
    torch.manual_seed(5)
    assert torch.equal(a, data.draw(16))  # the global (checkpointed) stream decides them


def _weights(run) -> dict[str, torch.Tensor]:
    nets = {"G": read_generator(run, ema=False)[0], "G_ema": read_generator(run, ema=True)[0],
            "D": ckpt_io.read_discriminator(run)[0]}
    return {f"{n}.{k}": v for n, net in nets.items() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("extra", [
    ("model.conditional=concat",),
    ("model.conditional=projection", "train.loss=hinge", "train.fake_classes=uniform", "train.d_steps=2"),
    ("model.conditional=concat", "model.d_pack=2", "train.r1_gamma=1.0", "train.diffaugment=color,translation"),
], ids=["concat", "projection-hinge-uniform-dsteps2", "concat-pack-r1-diffaugment"])
def test_conditional_resume_is_bit_identical(tmp_path, extra) -> None:
    """N steps straight == N/2 steps, kill, --resume to N: the same G, G_ema and D, bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("train.checkpoint_every=6", *extra)
    counts = [5, 1, 2]  # unequal class frequencies: fake_classes = data draws from a skewed distribution
    train(tiny_config(straight, "train.steps=12", *common), stream=ClassStream(K, counts))
    train(tiny_config(split, "train.steps=6", *common), stream=ClassStream(K, counts))
    half = _weights(split)
    train(tiny_config(split, "train.steps=12", *common), resume=True, stream=ClassStream(K, counts))
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], half[k]) for k in a)  # steps 7-12 moved the weights
    assert any("embed" in k for k in a)  # a conditional net was trained, not the unconditional one
    state = json.loads((split / "checkpoints" / "step-00000012" / "state.json").read_text())
    assert state["config"]["model"]["num_classes"] == K
    assert state["config"]["model"]["class_names"] == "class0,class1,class2"


def test_conditional_run_with_amp_ema_and_batch_bn_writes_one_row_per_class(tmp_path) -> None:
    run = tmp_path / "run"
    metrics = train(tiny_config(run, "train.steps=10", "model.conditional=projection", "train.amp=bf16",
                                "train.ema=true", "model.g_sample_bn=batch", "log.n_samples=6"),
                    stream=ClassStream(K))
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("Loss/D", "Loss/G"))
    grid = Image.open(run / "samples" / "ema-00000010.png")
    # 6 samples over 3 classes: 3 rows of 2 64-px images (2 px padding), plus a margin for the names at the left
    assert grid.height == 2 + 3 * 66 and grid.width > 2 + 2 * 66
    assert (run / "progress.gif").is_file()


def test_conditional_run_compiled_through_aot_autograd(tmp_path, monkeypatch) -> None:
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    try:
        metrics = train(tiny_config(tmp_path / "run", "train.steps=4", "log.every=2", "train.compile=true",
                                    "model.conditional=concat", "train.r1_gamma=1.0", "train.diffaugment=color"),
                        stream=ClassStream(K))
    finally:
        torch._dynamo.reset()
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("Loss/D", "Loss/G"))


def test_a_stream_without_class_names_refuses_a_conditional_model(tmp_path) -> None:
    from _core import TensorStream

    with pytest.raises(UserError, match="model.conditional = 'concat' needs a data stream with class names"):
        train(tiny_config(tmp_path / "run", "train.steps=2", "model.conditional=concat"), stream=TensorStream())


def test_conditional_shards_train_with_the_manifests_classes(shards, tmp_path) -> None:
    """Labels flow from real shards: SynthFlowers' manifest gives the classes and their names."""
    manifest = json.loads((shards / "manifest.json").read_text())
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=2", "train.checkpoint_every=2", "model.conditional=concat",
                      f"data.path={shards}", "data.workers=0", "data.cache=memory"))
    model = json.loads((run / "checkpoints" / "step-00000002" / "state.json").read_text())["config"]["model"]
    assert model["num_classes"] == manifest["num_classes"] >= 2
    assert model["class_names"].split(",") == manifest["classes"]


def test_generate_takes_classes_and_a_seed_and_class_give_the_same_image_on_any_batch() -> None:
    torch.manual_seed(0)
    G = Generator(16, 8, 16, num_classes=K, conditional="concat")
    recompute_bn_stats(G)
    a = generate(G, 70, seed=3, batch=64, classes=2)
    b = generate(G, 70, seed=3, batch=7, classes=[2] * 70)
    assert torch.equal(a, b)
    mixed = generate(G, 70, seed=3, batch=5, classes=torch.tensor([0, 2] * 35))
    assert torch.equal(mixed[1::2], a[1::2]) and not torch.equal(mixed[0::2], a[0::2])
    cycled = generate(G, 6, seed=3)  # no classes: every class in turn
    assert torch.equal(cycled[2], a[2])
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        generate(G, 2, classes=3)
    with pytest.raises(ValueError, match="unconditional"):
        generate(Generator(16, 8, 16), 2, classes=1)


@pytest.mark.parametrize("conditional", ["concat", "projection"])
def test_conditional_nets_in_channels_last_match_nchw(conditional: str) -> None:
    """The GPU layout (train.channels_last): the same logits as NCHW, and a concat D's label map joins x in NHWC."""
    torch.manual_seed(0)
    G, D = build_models(_cfg(16, conditional=conditional))
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 1])
    x = G(z, y).detach()
    want = D(x, y)
    D_nhwc = D.to(memory_format=torch.channels_last)
    got = D_nhwc(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
