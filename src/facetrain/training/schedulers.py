"""Learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup then cosine decay over the run (``total_steps`` optimizer steps, known only at fit time).

    Args:
        optimizer: The optimizer whose learning rates are scheduled.
        total_steps: Optimizer steps of the whole run (Lightning's ``estimated_stepping_batches``).
        warmup_fraction: Share of the run spent warming up.
        min_lr_ratio: Final LR as a fraction of the base LR.
    """
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    total_steps = max(1, int(total_steps))
    warmup_steps = max(1, int(round(warmup_fraction * total_steps)))
    # A partial of a module-level function keeps the scheduler's state_dict plain data (weights-only loadable).
    factor = functools.partial(
        warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """A constant learning rate (``scheduler=none``); ``total_steps`` is accepted for a uniform call."""
    del total_steps
    return LambdaLR(optimizer, _one)


def _one(step: int) -> float:
    return 1.0
