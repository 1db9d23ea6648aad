"""Learning-rate schedules, applied per iteration (as Caffe's solver does).

Each schedule maps training progress ``p`` in [0, 1] (iteration / total iterations) to a
multiplier of the base learning rate. A linear warm-up, if any, multiplies on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from herbid.errors import InvalidOption

ScheduleFn = Callable[[float], float]


def poly(p: float, power: float = 0.5) -> float:
    """Caffe's ``poly`` policy as in the GoogLeNet quick solver: (1 − it/max_it)^0.5."""
    return max(0.0, 1.0 - p) ** power


def cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))


def step(p: float) -> float:
    """×0.1 after one third and again after two thirds of training (Caffe's ``step``)."""
    return 0.1 ** math.floor(3.0 * min(p, 0.999999))


def constant(p: float) -> float:
    return 1.0


#: Schedules by name. Add one by adding an entry.
SCHEDULES: dict[str, ScheduleFn] = {"poly": poly, "cosine": cosine, "step": step, "constant": constant}


@dataclass
class LrLambda:
    """A picklable ``LambdaLR`` multiplier: warm-up then the named schedule."""

    schedule: str
    total_steps: int
    warmup_steps: int = 0

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup_steps:
            return (iteration + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        return SCHEDULES[self.schedule]((iteration - self.warmup_steps) / span)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    if schedule not in SCHEDULES:
        raise InvalidOption(f"unknown schedule {schedule!r}; known: {', '.join(sorted(SCHEDULES))}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LrLambda(schedule, total_steps, warmup_steps))
