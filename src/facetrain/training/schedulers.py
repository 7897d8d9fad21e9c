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


def warmup_multistep_factor(step: int, warmup_steps: int, milestones: tuple[int, ...], gamma: float) -> float:
    """LR multiplier: linear warmup, then ×``gamma`` at every milestone passed."""
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    return warm * gamma ** sum(step >= m for m in milestones)


def warmup_multistep(
    optimizer: Optimizer,
    total_steps: int,
    milestones: list[float] = (0.625, 0.875),  # type: ignore[assignment]
    gamma: float = 0.1,
    warmup_fraction: float = 0.0,
) -> LambdaLR:
    """Step decay at fractions of the run, as the CASIA-WebFace recipes (ArcFace: ÷10 at epochs 20 and 28 of 32).

    Args:
        optimizer: The optimizer whose learning rates are scheduled.
        total_steps: Optimizer steps of the whole run.
        milestones: Fractions of the run in (0, 1) where the LR is multiplied by ``gamma``.
        gamma: Decay factor.
        warmup_fraction: Share of the run spent in linear warmup.
    """
    if any(not 0.0 < m < 1.0 for m in milestones):
        raise ValueError(f"scheduler.milestones must be fractions in (0, 1), got {list(milestones)}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"scheduler.gamma must be in (0, 1], got {gamma}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    total_steps = max(1, int(total_steps))
    factor = functools.partial(
        warmup_multistep_factor,
        warmup_steps=max(1, int(round(warmup_fraction * total_steps))),
        milestones=tuple(int(round(m * total_steps)) for m in milestones),
        gamma=gamma,
    )
    return LambdaLR(optimizer, factor)
