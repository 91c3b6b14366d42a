"""Which interval work is due after a step (torchtitan's trainer asks its checkpointer and metrics the same
question): logging, the epoch summary, sample grids, evaluation, checkpoints. Pure arithmetic on the step."""

from __future__ import annotations

from dataclasses import dataclass

from flowergan.config import Config


@dataclass(frozen=True)
class Due:
    log: bool = False
    epoch_end: bool = False
    sample: bool = False
    evaluate: bool = False
    checkpoint: bool = False

    @property
    def anything(self) -> bool:
        """Whether the loop leaves the device for this step at all (a host sync)."""
        return self.log or self.epoch_end or self.sample


@dataclass(frozen=True)
class Schedule:
    steps: int  # the last step
    log_every: int
    sample_every: int
    eval_every: int  # 0 = never
    checkpoint_every: int
    d_steps: int  # batches per step
    batches_per_epoch: int

    @classmethod
    def of(cls, cfg: Config, steps: int, batches_per_epoch: int, evaluates: bool) -> Schedule:
        return cls(steps, cfg.log.every, cfg.log.sample_every, cfg.eval.every if evaluates else 0,
                   cfg.train.checkpoint_every, cfg.train.d_steps, batches_per_epoch)

    def at(self, step: int) -> Due:
        """What is due once `step` steps are done. Evaluation steps are checkpoint steps (the best one is kept),
        and both are log steps, so every checkpoint carries the metrics of its own step."""
        last = step == self.steps
        evaluate = self.eval_every > 0 and (step % self.eval_every == 0 or last)
        checkpoint = step % self.checkpoint_every == 0 or last or evaluate
        return Due(log=step % self.log_every == 0 or last or checkpoint,
                   epoch_end=(step * self.d_steps) % self.batches_per_epoch < self.d_steps,
                   sample=step % self.sample_every == 0 or last,
                   evaluate=evaluate, checkpoint=checkpoint)

    def epoch(self, step: int) -> int:
        return (step * self.d_steps) // self.batches_per_epoch
