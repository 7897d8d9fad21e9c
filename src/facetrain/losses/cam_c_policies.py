"""Schedules of the cam-softmax angle c (policy objects for :class:`~facetrain.losses.cam_softmax.CamSoftmaxHead`).

Configured in the nested config group ``loss/c_policy`` (``configs/loss/c_policy/``). A step policy (:class:`CPolicy`)
is a pure function of the optimizer step (and, for a schedule defined over the run, of the run's length); an adaptive
policy (:class:`AdaptiveCPolicy`) updates c from a training statistic. Either way the head keeps all state in buffers,
so a resumed run continues the identical c sequence.

Official code: github stamas02/cam-softmax, ``train.py`` (c <- max(pi/4, c - 1e-4) after every optimizer step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from facetrain.utils.rules import NON_NEGATIVE, Constraint, Interval, check_args

__all__ = ["C_RANGE", "HALF_PI", "AdaptiveC", "AdaptiveCPolicy", "CPolicy", "FixedC", "LinearC"]

HALF_PI = math.pi / 2


#: Valid angles c: (0, π/2] (π/2 is plain normalised softmax). The one declaration of this rule: the policies' keys,
#: the head's check of a policy's initial c. A policy's values lie between its checked start and floor, so the
#: forward (:func:`~facetrain.losses.functional.cam_softmax_logits`) does not check c.
C_RANGE = Interval(0.0, HALF_PI, low_open=True)


def _floor_above_start(values: dict[str, object], floor_key: str, floor_default: float) -> str | None:
    """Config-time check of a schedule's floor (``stop``, ``c_min``) against its ``start``: c only decreases."""
    start, floor = values.get("start", HALF_PI), values.get(floor_key, floor_default)
    if isinstance(start, float | int) and isinstance(floor, float | int) and floor > start:
        return f"{floor_key}={floor!r} must be <= start={start!r} (c only decreases)"
    return None


@runtime_checkable
class CPolicy(Protocol):
    """Schedule of the cam-softmax angle c, as a pure function of the optimizer step."""

    def initial(self) -> float:
        """c before the first optimizer step."""
        ...

    def value(self, step: int, total_steps: int | None = None) -> float:
        """c after ``step`` optimizer steps of a run of ``total_steps`` (None: the run's length is not known yet)."""
        ...


@dataclass(frozen=True)
class FixedC:
    """Constant c.

    Args:
        c: Angle in (0, π/2]; π/2 makes the head a NormFace head.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {"c": C_RANGE}

    c: float = HALF_PI

    def __post_init__(self) -> None:
        check_args(self)

    def initial(self) -> float:
        """Returns c."""
        return float(self.c)

    def value(self, step: int, total_steps: int | None = None) -> float:
        """Returns c whatever the step."""
        del step, total_steps
        return float(self.c)


@dataclass(frozen=True)
class LinearC:
    """c falls linearly from ``start`` to ``stop`` and stays there; closed form of the step (no float drift).

    The slope is given one of two ways:

    * per optimizer step (``run_fraction`` None, the official code's rule): c = max(stop, start − decay·step);
    * over the run's length (``run_fraction`` = r): c = start − (start − stop)·min(1, step/(r·T)), where T is the
      run's number of optimizer steps (Lightning's ``trainer.estimated_stepping_batches``, fixed when the first fit
      starts and stored in the head, so a resumed run continues the same sequence). c reaches ``stop`` at the fraction
      r of the run whatever its length; ``decay`` is unused. The official rate of 1e-4 per step needs ~7,854 steps to
      go from π/2 to π/4, far more than a CPU run on the synthetic faces has (the default run: a few hundred), where c
      would stay near π/2 and cam-softmax would train as NormFace.

    Args:
        start: c at step 0, in (0, π/2].
        stop: Final c, 0 < stop <= start; per step it is reached after ceil((start − stop)/decay) steps.
        decay: Decrease of c per optimizer step, >= 0 (per-step form only).
        run_fraction: Fraction of the run in (0, 1] at which c reaches ``stop``; None for the per-step form.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "start": C_RANGE,
        "stop": C_RANGE,
        "decay": NON_NEGATIVE,
        "run_fraction": Interval(0.0, 1.0, low_open=True, allow_none=True),
    }

    @classmethod
    def check_config(cls, values: dict[str, object]) -> str | None:
        """Relation between keys (at config time and by the constructor): stop <= start."""
        return _floor_above_start(values, "stop", math.pi / 4)

    start: float = HALF_PI
    stop: float = math.pi / 4
    decay: float = 1e-4
    run_fraction: float | None = None

    def __post_init__(self) -> None:
        check_args(self)

    @property
    def uses_run_length(self) -> bool:
        """True when c depends on the run's length (``run_fraction`` set): the head then stores that length."""
        return self.run_fraction is not None

    def initial(self) -> float:
        """Returns start."""
        return self.value(0)

    def value(self, step: int, total_steps: int | None = None) -> float:
        """c after ``step`` optimizer steps (of a ``total_steps`` run, needed only with ``run_fraction``)."""
        if step < 0:
            raise ValueError(f"LinearC step must be >= 0, got {step!r}")
        start, stop = float(self.start), float(self.stop)
        if self.run_fraction is None:
            return max(stop, start - float(self.decay) * step)
        if step == 0:
            return start
        if total_steps is None or total_steps < 1:
            raise ValueError(
                f"LinearC with run_fraction={self.run_fraction!r} needs the run's number of optimizer steps (set by "
                f"the training module when fit starts), got total_steps={total_steps!r}"
            )
        progress = step / (float(self.run_fraction) * total_steps)
        # Exactly stop from the reach step on (start − (start − stop)·1 may differ from stop in the last bit).
        return stop if progress >= 1.0 else start - (start - stop) * progress


@runtime_checkable
class AdaptiveCPolicy(Protocol):
    """Policy that sets c from a training statistic (the mean target angle) instead of the step counter.

    Both methods are pure tensor functions so that all state stays in the head's buffers and nothing is read back to
    the host; the head calls ``observe`` then ``update`` after every optimizer step.
    """

    def initial(self) -> float:
        """c (and the initial statistic EMA) before the first optimizer step."""
        ...

    def observe(self, ema: torch.Tensor, theta_mean: torch.Tensor) -> torch.Tensor:
        """New EMA of the mean target angle after observing ``theta_mean`` (radians)."""
        ...

    def update(self, c: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
        """New c given the current c and the updated EMA."""
        ...


@dataclass(frozen=True)
class AdaptiveC:
    """Adaptive c: follows an EMA of the mean target angle, never increases, bounded, rate-limited (module docstring).

    Args:
        start: c before the first step, in (0, π/2]; also the initial EMA.
        c_min: Lower bound of c, 0 < c_min <= start.
        momentum: EMA weight α in (0, 1] of each new observation.
        max_step: Largest decrease of c per optimizer step, >= 0 (0 freezes c).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "start": C_RANGE,
        "c_min": C_RANGE,
        "momentum": Interval(0.0, 1.0, low_open=True),
        "max_step": NON_NEGATIVE,
    }

    @classmethod
    def check_config(cls, values: dict[str, object]) -> str | None:
        """Relation between keys (at config time and by the constructor): c_min <= start."""
        return _floor_above_start(values, "c_min", math.pi / 4)

    start: float = HALF_PI
    c_min: float = math.pi / 4
    momentum: float = 0.01
    max_step: float = 1e-4

    def __post_init__(self) -> None:
        check_args(self)

    def initial(self) -> float:
        """Returns start."""
        return float(self.start)

    def observe(self, ema: torch.Tensor, theta_mean: torch.Tensor) -> torch.Tensor:
        """ema ← (1 − α)·ema + α·θ̄."""
        return (1.0 - self.momentum) * ema + self.momentum * theta_mean.to(ema.dtype)

    def update(self, c: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
        """c ← max(clamp(ema, c_min, c), c − max_step): towards the EMA, never up, never below c_min."""
        target = torch.minimum(ema.to(c.dtype).clamp_min(self.c_min), c)
        return torch.maximum(target, c - self.max_step)
