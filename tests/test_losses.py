"""train.loss: the bce and hinge losses by hand, the statistic each logs and its honest tag, config rules."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _core import TensorStream, tiny_config
from _tiny_run import run_main

from flowergan.config import ConfigError, load_config
from flowergan.models import Discriminator, Generator
from flowergan.train.gan.losses import Loss, Targets, hinge_d_loss, hinge_g_loss
from flowergan.train.gan.step import Precision, gan_step
from flowergan.train.loop import train
from flowergan.train.observe.meters import epoch_tags, logged

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
CPU = torch.device("cpu")


def test_hinge_losses_by_hand() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-3.0, 0.25])
    # relu(1 - real): 0, 0.5, 2 -> mean 5/6; relu(1 + fake): 0, 1.25 -> mean 0.625
    assert hinge_d_loss(real, fake).item() == pytest.approx(5 / 6 + 0.625, rel=1e-6)
    assert hinge_g_loss(fake).item() == pytest.approx(1.375, rel=1e-6)
    hinge = Loss("hinge")
    assert hinge.d(real, fake).item() == pytest.approx(5 / 6 + 0.625, rel=1e-6)
    assert hinge.g(fake).item() == pytest.approx(1.375, rel=1e-6)
    # hinge logs the raw score, bce the probability
    assert hinge.statistic(real).item() == pytest.approx(0.5)
    assert Loss("bce").statistic(real).item() == pytest.approx(torch.sigmoid(real).mean().item())


def test_each_loss_names_its_statistic_honestly() -> None:
    assert logged("bce") == ("Loss/D", "Loss/G", "D/real", "D/fake_before", "D/fake_after")
    assert logged("hinge") == ("Loss/D", "Loss/G", "D/real_logit", "D/fake_before_logit", "D/fake_after_logit")
    assert set(epoch_tags(logged("bce"))) == {"Epoch/Loss_D", "Epoch/Loss_G", "Epoch/D_real", "Epoch/D_fake_after"}
    assert "Epoch/D_real_logit" in epoch_tags(logged("hinge"))
    with pytest.raises(ValueError, match="loss must be one of"):
        Loss("wgan")


def test_loss_of_the_config_and_bce_keeps_the_smoothed_targets() -> None:
    assert Loss.of(load_config(None, []).train) == Loss("bce", Targets(0.9, 0.1, 1.0))
    assert Loss.of(load_config(None, ["train.loss=hinge"]).train).name == "hinge"


def test_a_hinge_step_matches_a_hand_written_one() -> None:
    torch.manual_seed(0)
    G, D = Generator(8, 8, 16), Discriminator(8, 16)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999))
    real, z = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 8)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = gan_step(G, D, opt_g, opt_d, [real], [z], Precision(CPU, None, False), Loss("hinge"))
    fake = G0(z)
    real_logits, fake_logits = D0(real), D0(fake.detach())
    want_d = torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()
    assert torch.allclose(out.loss_d, want_d, atol=1e-6)
    assert torch.allclose(out.d_real, real_logits.mean(), atol=1e-6)  # the raw score, not a probability
    after = D(fake)
    assert torch.allclose(out.loss_g, -after.mean(), atol=1e-6)
    assert torch.allclose(out.d_fake_after, after.mean(), atol=1e-6)


@pytest.mark.parametrize("override", ["train.real_label=1.0", "train.fake_label=0.0", "train.g_target=0.9"])
def test_bce_targets_with_hinge_are_refused_in_one_line(override: str) -> None:
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{field} = .* train.loss = 'hinge'") as e:
        load_config(None, ["train.loss=hinge", override])
    assert "\n" not in str(e.value)


def test_a_hinge_run_logs_the_logit_tags_and_no_probability(tmp_path) -> None:
    run = tmp_path / "run"
    metrics = train(tiny_config(run, "train.steps=10", "train.loss=hinge"), stream=TensorStream())
    assert {"D/real_logit", "D/fake_before_logit", "D/fake_after_logit"} <= set(metrics)
    assert "D/real" not in metrics
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "D/real_logit" in lines[-1] and not any("D/real" in rec for rec in lines)
    epoch = [rec for rec in lines if "Epoch/Loss_D" in rec]
    assert epoch and "Epoch/D_real_logit" in epoch[0]


def test_flowergan_config_explains_the_new_fields(capsys) -> None:
    code, out, _ = run_main(capsys, "config")
    assert code == 0
    for text in ("loss = \"bce\"", "hinge", "fake_classes = \"data\"", "conditional = \"none\"", "projection",
                 "num_classes = 0", "class_names = \"\""):
        assert text in out, text
