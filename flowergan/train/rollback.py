"""Recovery from a non-finite loss without disk: every rank keeps the last good state in memory (taken at each
checkpoint) and goes back to it, with new noise, at most `train.nan_retries` times in a row."""

from __future__ import annotations

import copy
from typing import Any

from flowergan.errors import UserError
from flowergan.train import rng
from flowergan.train.state import TrainState


class Rollback:
    def __init__(self, state: TrainState, retries: int, seed: int, rank: int):
        self.state, self.max_retries, self.seed, self.rank = state, retries, seed, rank
        self.retries = 0
        self.good: dict[str, Any] = state.snapshot()

    def keep(self) -> None:
        """The state is good (it was just checkpointed): remember it, and reset the retry count."""
        self.good = self.state.snapshot()
        self.retries = 0

    def roll_back(self) -> str:
        """Go back to the last good state; returns the line to show. Raises once the retries are used up."""
        self.retries += 1
        bad, good = self.state.step, int(self.good["step"])
        if self.retries > self.max_retries:
            raise UserError(f"non-finite loss persisted after {self.max_retries} rollbacks at step {bad}; "
                            "lower optim.lr_d / optim.lr_g or set train.amp=off")
        # A copy: Optimizer.load_state_dict keeps the very tensors it is given, and Adam updates them in place.
        self.state.load_state_dict({**copy.deepcopy(self.good), "rng": None})
        # New noise so the retry does not replay the exact same divergence.
        rng.reseed(self.seed, self.rank, 7919 * self.retries)
        return (f"non-finite loss between steps {good} and {bad}: rolling back to step {good} "
                f"(retry {self.retries} of {self.max_retries})")
