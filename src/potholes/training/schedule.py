"""How long a model trains: a budget of optimizer steps, split into rounds, and the step schedule.

A fixed epoch count trains a 60-image dataset for a few dozen steps and a 2,000-image dataset for
thousands; a budget of steps costs the same time on both (a step's cost depends on the batch and
the image size, not on the dataset), and the learning rate follows steps: a linear warm-up, then
a cosine decay to zero at the last step. Training stops every ``steps_per_round`` steps to
validate, keep the best weights and write a resume point; a round is the unit of the loop, of
the MLflow curves (logged at the step where each round ends) and of ``--resume``.

``epochs`` remains an explicit override: rounds are then passes over the training split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Plan:
    rounds: int
    steps_per_round: int
    warmup_steps: int
    images_per_step: int  # batch size x processes
    train_images: int

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round

    @property
    def passes(self) -> float:
        """Training images seen, in passes over the training split."""
        return self.total_steps * self.images_per_step / max(self.train_images, 1)

    def as_params(self) -> dict:
        return {"total_steps": self.total_steps, "rounds": self.rounds, "steps_per_round": self.steps_per_round,
                "warmup_steps": self.warmup_steps, "passes": round(self.passes, 2)}

    def describe(self) -> str:
        return (f"{self.total_steps} steps of {self.images_per_step} images ({self.passes:.1f} passes over "
                f"{self.train_images} training images) in {self.rounds} rounds of {self.steps_per_round}, "
                f"warm-up {self.warmup_steps}")


# Validation images per run: a large validation split is validated less often. A validation image
# costs ~0.08 s at 256 px on 2 cores, so 1,000 keep validation under ~1.5 minutes a training (the
# dev set's 36 images x 10 rounds are well below; 2,000 images' 300 get 3 rounds, BENCHMARKS.md row 6c).
VALIDATION_BUDGET = 1000


def plan_training(*, train_images: int, batch_size: int, world_size: int = 1, steps: int | None = None,
                  epochs: int | None = None, rounds: int = 10, warmup: float = 0.05, val_images: int = 0) -> Plan:
    """The plan for ``steps`` optimizer steps (validating ``rounds`` times, fewer when the
    validation split is large, never under 3), or, when ``epochs`` is given, for that many passes
    over ``train_images`` (validating after each)."""
    per_step = batch_size * world_size
    if epochs is not None:
        # A pass is the number of full batches it holds (at least one): the sample stream runs on
        # across passes, so the images left over from one pass start the next instead of being dropped.
        steps_per_round, rounds = max(1, train_images // per_step), epochs
    else:
        if steps is None:
            raise ValueError("either steps or epochs must be given")
        if val_images:
            rounds = min(rounds, max(3, VALIDATION_BUDGET // val_images))
        rounds = max(1, min(rounds, steps))
        steps_per_round = math.ceil(steps / rounds)
    total = rounds * steps_per_round
    return Plan(rounds=rounds, steps_per_round=steps_per_round, warmup_steps=round(warmup * total),
                images_per_step=per_step, train_images=train_images)


def warmup_cosine(optimizer: torch.optim.Optimizer, plan: Plan) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base learning rate, then cosine to 0 at the plan's last step.
    Stepped once per optimizer step."""
    warm, total = plan.warmup_steps, plan.total_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
