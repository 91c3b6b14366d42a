"""The contract between the training loop and in-training evaluation (built by the caller, e.g. the CLI).

The loop never imports flowergan_eval: it is handed an `Evaluate` and asks it which score picks the best
checkpoint and in which direction, so any metric of the eval registry can choose "best".
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn


class Evaluate(Protocol):
    """G (in eval mode) and the device -> {score name: value}; `best_key` names the score that picks "best"."""

    @property
    def best_key(self) -> str: ...  # e.g. "kid1k": the metric with its sample count, a key of the scores

    @property
    def lower_is_better(self) -> bool: ...

    def __call__(self, G: nn.Module, device: torch.device) -> dict[str, float]: ...


def initial_best(evaluate: Evaluate | None) -> float:
    """The best score before any evaluation: the worst possible value in the metric's direction."""
    return math.inf if evaluate is None or evaluate.lower_is_better else -math.inf


def improves(evaluate: Evaluate, scores: dict[str, float], best: float) -> bool:
    """Whether `scores` beat `best` on the selecting metric (a missing or non-finite score never does)."""
    value = scores.get(evaluate.best_key)
    if value is None or not math.isfinite(value):
        return False
    return value < best if evaluate.lower_is_better else value > best
