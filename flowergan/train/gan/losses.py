"""The adversarial losses, chosen by `train.loss`: D's loss, G's loss and the statistic of D's output that is logged.

bce (the default): Goodfellow's cross-entropy on logits with label smoothing (D sees real 0.9, fake 0.1) and the
non-saturating G loss; D's output read as the probability sigmoid(D(x)).
hinge (Lim & Ye 2017; Miyato et al. 2018, the standard of projection cGANs): D minimises E[relu(1 - D(x))] +
E[relu(1 + D(G(z)))], G minimises -E[D(G(z))]; D's output is a score, not a probability, so the raw logit is logged.

Pure functions of logits: the step calls them in fp32 (`.float()`) whatever the autocast dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from flowergan.config import TrainConfig

LOSSES = ("bce", "hinge")  # train.loss


@dataclass(frozen=True)
class Targets:
    """Label smoothing: D sees real 0.9, fake 0.1; G aims for 1.0 (the non-saturating loss)."""

    real: float = 0.9
    fake: float = 0.1
    g: float = 1.0

    @classmethod
    def of(cls, tc: TrainConfig) -> Targets:
        """The bce targets of the [train] section."""
        return cls(tc.real_label, tc.fake_label, tc.g_target)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """BCE on logits of real (target `targets.real`) plus fake (target `targets.fake`)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, targets.real))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, targets.fake)))


def g_loss(fake_logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Non-saturating G loss: BCE of D(G(z)) against `targets.g` (1.0 by default)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, targets.g))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (zero once D is confident by a margin of 1)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's loss under hinge: -E[D(G(z))] (Miyato et al. 2018; no margin on G's side)."""
    return -fake_logits.mean()


@dataclass(frozen=True)
class Loss:
    """One adversarial loss: `d(real, fake)`, `g(fake)`, `statistic(logits)` and the tags that statistic is
    logged under (D/real, D/fake_before, D/fake_after)."""

    name: str = "bce"
    targets: Targets = field(default_factory=Targets)  # bce only

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.name!r}")

    @classmethod
    def of(cls, tc: TrainConfig) -> Loss:
        """The loss the [train] section chooses (a new loss option is a field here and one in config.py)."""
        return cls(tc.loss, Targets.of(tc))

    def d(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.name == "hinge":
            return hinge_d_loss(real_logits, fake_logits)
        return d_loss(real_logits, fake_logits, self.targets)

    def g(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.name == "hinge":
            return hinge_g_loss(fake_logits)
        return g_loss(fake_logits, self.targets)

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """What D's output means, averaged: the probability sigmoid(D) under bce, the raw score under hinge."""
        logits = logits.detach().float()
        return logits.mean() if self.name == "hinge" else torch.sigmoid(logits).mean()

    @property
    def tags(self) -> tuple[str, str, str]:
        """The logged names of `statistic` on the reals, the fakes before D's update and after it."""
        return logged_d_tags(self.name)


def logged_d_tags(loss: str) -> tuple[str, str, str]:
    """D's statistic tags for `train.loss`: D/real ... (probabilities) under bce, D/real_logit ... under hinge."""
    suffix = "_logit" if loss == "hinge" else ""
    return (f"D/real{suffix}", f"D/fake_before{suffix}", f"D/fake_after{suffix}")
