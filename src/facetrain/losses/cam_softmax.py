"""Cam-softmax head (Suveges & McKenna, "Cam-Softmax for Discriminative Deep Feature Learning", ICPR 2020).

Features and class weights are L2-normalised; the target cosine goes through f(cos) = 2·((cos + 1)/2)^c′ − 1 with
c′ = 1/(1 − log2(cos c + 1)), the other logits stay s·cos θ_j (official code github stamas02/cam-softmax,
``src/cam_loss.py``, default s = 20). f(cos c) = 0, f(±1) = ±1, and c = π/2 is plain normalised softmax; lowering c
strengthens the penalty on the target.

The paper's abstract describes an algorithm that adapts c automatically during training; it is not published and the
official code instead anneals c linearly per optimizer step, c ← max(π/4, c − 1e-4) from π/2 (``train.py``), which
:class:`LinearC` reproduces. Schedules are small policy objects so that another rule can be plugged in.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from facetrain.losses.base import CosineHead
from facetrain.losses.functional import cam_softmax_logits

__all__ = ["CPolicy", "CamSoftmaxHead", "FixedC", "LinearC"]

HALF_PI = math.pi / 2


def _check_c(name: str, value: float) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 < value <= HALF_PI:
        raise ValueError(f"{name} must be in (0, pi/2] (pi/2 = {HALF_PI!r}), got {value!r}")


@runtime_checkable
class CPolicy(Protocol):
    """Schedule of the cam-softmax angle c, as a pure function of the optimizer step."""

    def initial(self) -> float:
        """c before the first optimizer step."""
        ...

    def value(self, step: int) -> float:
        """c after ``step`` optimizer steps."""
        ...


@dataclass(frozen=True)
class FixedC:
    """Constant c.

    Args:
        c: Angle in (0, π/2]; π/2 makes the head a NormFace head.
    """

    c: float = HALF_PI

    def __post_init__(self) -> None:
        _check_c("FixedC c", self.c)

    def initial(self) -> float:
        """Returns c."""
        return float(self.c)

    def value(self, step: int) -> float:
        """Returns c whatever the step."""
        del step
        return float(self.c)


@dataclass(frozen=True)
class LinearC:
    """Linear annealing of the official code: c = max(stop, start − decay·step), in closed form (no float drift).

    Args:
        start: c at step 0, in (0, π/2].
        stop: Final c, 0 < stop <= start; reached after ceil((start − stop)/decay) steps.
        decay: Decrease of c per optimizer step, >= 0.
    """

    start: float = HALF_PI
    stop: float = math.pi / 4
    decay: float = 1e-4

    def __post_init__(self) -> None:
        _check_c("LinearC start", self.start)
        _check_c("LinearC stop", self.stop)
        if self.stop > self.start:
            raise ValueError(f"LinearC stop must be <= start, got stop={self.stop!r} > start={self.start!r}")
        if not (isinstance(self.decay, numbers.Real) and math.isfinite(self.decay) and self.decay >= 0):
            raise ValueError(f"LinearC decay must be >= 0, got {self.decay!r}")

    def initial(self) -> float:
        """Returns start."""
        return self.value(0)

    def value(self, step: int) -> float:
        """Returns max(stop, start − decay·step)."""
        if step < 0:
            raise ValueError(f"LinearC step must be >= 0, got {step!r}")
        return max(float(self.stop), float(self.start) - float(self.decay) * step)


class CamSoftmaxHead(CosineHead):
    """Cam-softmax: target logit s·f(cos θ_y), with c scheduled per optimizer step.

    ``c`` (float64) and ``step`` (int64) are registered buffers and c is recomputed from the step counter after every
    optimizer step, so restoring a state_dict continues the same c sequence exactly. Casting the whole module to a
    low-precision dtype (``module.to(torch.bfloat16)``) also casts ``c``; the step counter keeps the schedule exact.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0 (20 in the official code).
        c_policy: Schedule of c (built by Hydra from a nested ``_target_``); ``None`` means ``LinearC()``, the
            official π/2 → π/4 schedule with decay 1e-4 per step.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 20.0, c_policy: CPolicy | None = None
    ) -> None:
        policy = LinearC() if c_policy is None else c_policy
        if not isinstance(policy, CPolicy):
            raise ValueError(f"cam-softmax c_policy must have initial() and value(step), got {policy!r}")
        initial = policy.initial()
        _check_c(f"cam-softmax c_policy.initial() of {policy!r}", initial)
        super().__init__(embedding_size, num_classes, scale)
        self.c_policy = policy
        self.register_buffer("c", torch.tensor(float(initial), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Applies the cam-softmax activation with the current c to the target cosines."""
        return cam_softmax_logits(cos, labels, self.c)

    def on_optimizer_step(self) -> None:
        """Advances the step counter and sets c to the policy's value for it."""
        self.step.add_(1)
        value = self.c_policy.value(int(self.step))
        # The forward does not read c back from the device, so the range check has to happen when c is written.
        _check_c(f"cam-softmax c_policy.value({int(self.step)}) of {self.c_policy!r}", value)
        self.c.fill_(value)

    def log_values(self) -> dict[str, torch.Tensor]:
        """Logs the current c as ``cam_c`` (a copy, since the buffer is updated in place)."""
        return {"cam_c": self.c.detach().clone()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c_policy={self.c_policy!r}"
