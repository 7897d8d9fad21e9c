"""Cam-softmax head (Suveges & McKenna, "Cam-Softmax for Discriminative Deep Feature Learning", ICPR 2020).

Features and class weights are L2-normalised; the target cosine goes through f(cos) = 2·((cos + 1)/2)^c′ − 1 with
c′ = 1/(1 − log2(cos c + 1)), the other logits stay s·cos θ_j (official code github stamas02/cam-softmax,
``src/cam_loss.py``, default s = 20). f(cos c) = 0, f(±1) = ±1, and c = π/2 is plain normalised softmax; lowering c
strengthens the penalty on the target.

The paper's abstract describes an algorithm that adapts c automatically during training; it is not published and the
official code instead anneals c linearly per optimizer step, c ← max(π/4, c − 1e-4) from π/2 (``train.py``), which
:class:`LinearC` reproduces. Schedules are small policy objects so that another rule can be plugged in.

Adaptive rule (:class:`AdaptiveC`, our design; the paper's rule is unpublished)
    The head measures the mean target angle θ̄ = mean_i acos(cos θ_{y_i}) of the training batches seen since the last
    optimizer step and, after each step, updates

        ema ← (1 − α)·ema + α·θ̄                      (α = ``momentum``, ema₀ = c₀ = ``start``)
        c   ← max(clamp(ema, c_min, c), c − max_step)

    so c follows the running mean target angle downwards, never increases, stays in [c_min, start] ⊂ (0, π/2] and
    moves by at most ``max_step`` per optimizer step. Reasoning: f(cos c) = 0, i.e. a sample at angle c from its class
    weight gets the target logit of an orthogonal one. At initialisation the target angles of random embeddings are
    ≈ π/2, so c = π/2 (plain normalised softmax) matches the abstract's "gradually diverges from the standard
    softmax"; as the network pulls samples towards their classes θ̄ falls and c follows it, so a *typical* sample keeps
    getting the zero-logit penalty and the loss keeps pressing for compactness, while a network that does not yet
    separate the classes is not penalised harder than it can follow. Never increasing removes the feedback loop in
    which a stronger penalty raises θ̄, which would relax c again (oscillation); the EMA (≈ 1/α batches) smooths batch
    noise; ``max_step`` = 1e-4 and ``c_min`` = π/4 default to the official linear schedule's rate and floor, so the
    adaptive c is never ahead of the official one and equals it whenever θ̄ drops quickly. Every piece of state (ema, c,
    the step counter and the pending θ̄ sum/count) lives in buffers of the head, so restoring a state_dict continues
    the identical c sequence. Under DDP with ``broadcast_buffers`` (the default) rank 0's statistics drive c.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from facetrain.losses.base import CosineHead
from facetrain.losses.functional import cam_softmax_logits
from facetrain.utils.schema import NON_NEGATIVE, Constraint, Interval

__all__ = ["AdaptiveC", "AdaptiveCPolicy", "CPolicy", "CamSoftmaxHead", "FixedC", "LinearC"]

HALF_PI = math.pi / 2


#: Valid angles c: (0, π/2] (π/2 is plain normalised softmax).
C_RANGE = Interval(0.0, HALF_PI, low_open=True)


def _floor_above_start(values: dict[str, object], floor_key: str, floor_default: float) -> str | None:
    """Config-time check of a schedule's floor (``stop``, ``c_min``) against its ``start``: c only decreases."""
    start, floor = values.get("start", HALF_PI), values.get(floor_key, floor_default)
    if isinstance(start, float | int) and isinstance(floor, float | int) and floor > start:
        return f"{floor_key}={floor!r} must be <= start={start!r} (c only decreases)"
    return None


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

    #: Valid values, checked per config key before the data is read (facetrain.utils.schema).
    config_constraints: ClassVar[dict[str, Constraint]] = {"c": C_RANGE}

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

    #: Valid values, checked per config key before the data is read (facetrain.utils.schema).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "start": C_RANGE,
        "stop": C_RANGE,
        "decay": NON_NEGATIVE,
    }

    @classmethod
    def check_config(cls, values: dict[str, object]) -> str | None:
        """Relation between keys, checked before the data is read: stop <= start."""
        return _floor_above_start(values, "stop", math.pi / 4)

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

    #: Valid values, checked per config key before the data is read (facetrain.utils.schema).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "start": C_RANGE,
        "c_min": C_RANGE,
        "momentum": Interval(0.0, 1.0, low_open=True),
        "max_step": NON_NEGATIVE,
    }

    @classmethod
    def check_config(cls, values: dict[str, object]) -> str | None:
        """Relation between keys, checked before the data is read: c_min <= start."""
        return _floor_above_start(values, "c_min", math.pi / 4)

    start: float = HALF_PI
    c_min: float = math.pi / 4
    momentum: float = 0.01
    max_step: float = 1e-4

    def __post_init__(self) -> None:
        _check_c("AdaptiveC start", self.start)
        _check_c("AdaptiveC c_min", self.c_min)
        if self.c_min > self.start:
            raise ValueError(f"AdaptiveC c_min must be <= start, got c_min={self.c_min!r} > start={self.start!r}")
        if not (isinstance(self.momentum, numbers.Real) and 0.0 < self.momentum <= 1.0):
            raise ValueError(f"AdaptiveC momentum must be in (0, 1], got {self.momentum!r}")
        if not (isinstance(self.max_step, numbers.Real) and math.isfinite(self.max_step) and self.max_step >= 0):
            raise ValueError(f"AdaptiveC max_step must be >= 0, got {self.max_step!r}")

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


class CamSoftmaxHead(CosineHead):
    """Cam-softmax: target logit s·f(cos θ_y), with c scheduled per optimizer step.

    ``c`` (float64) and ``step`` (int64) are registered buffers and c is recomputed from the step counter after every
    optimizer step, so restoring a state_dict continues the same c sequence exactly. With an :class:`AdaptiveCPolicy`
    the head also keeps ``theta_ema`` and the pending ``theta_sum``/``theta_count`` of the training forwards since the
    last step in buffers and lets the policy update c from them. Casting the whole module to a
    low-precision dtype (``module.to(torch.bfloat16)``) also casts ``c``; the step counter keeps the schedule exact.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0 (20 in the official code).
        c_policy: Schedule of c (built by Hydra from the ``loss/c_policy`` group): a step-based :class:`CPolicy` or an
            :class:`AdaptiveCPolicy`; ``None`` means ``LinearC()``, the official π/2 → π/4 schedule with decay 1e-4
            per step.
    """

    #: Valid values, checked per config key before the data is read (facetrain.utils.schema).
    config_constraints: ClassVar[dict[str, Constraint]] = {**CosineHead.config_constraints}

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 20.0,
        c_policy: CPolicy | AdaptiveCPolicy | None = None,
        nan_check: bool = True,
    ) -> None:
        policy = LinearC() if c_policy is None else c_policy
        adaptive = isinstance(policy, AdaptiveCPolicy)
        if not adaptive and not isinstance(policy, CPolicy):
            raise ValueError(
                f"cam-softmax c_policy must have initial() and value(step), or initial(), observe() and update(), "
                f"got {policy!r}"
            )
        initial = policy.initial()
        _check_c(f"cam-softmax c_policy.initial() of {policy!r}", initial)
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.c_policy = policy
        self.register_buffer("c", torch.tensor(float(initial), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # A host copy of ``step``: the schedule is a Python function of the step, and reading the buffer back from an
        # accelerator every step would stall the host. Kept equal to the buffer on load (_load_from_state_dict).
        self._host_step = 0
        self.adaptive = adaptive
        if adaptive:
            self.register_buffer("theta_ema", torch.tensor(float(initial), dtype=torch.float64))
            self.register_buffer("theta_sum", torch.zeros((), dtype=torch.float64))
            self.register_buffer("theta_count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def observe(self, cos: torch.Tensor, labels: torch.Tensor) -> None:
        """An adaptive policy records the batch's target angles; c itself changes only at the next optimizer step."""
        if not self.adaptive:
            return
        # B acos only, no gradient: the statistic steers a hyper-parameter, it is not part of the loss.
        target = cos.gather(1, labels.reshape(-1, 1).long()).to(self.theta_sum.dtype).clamp(-1.0, 1.0)
        self.theta_sum.add_(torch.acos(target).sum())
        self.theta_count.add_(target.numel())

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Applies the cam-softmax activation with the current c to the target cosines (no side effects)."""
        # c was range-checked when it was written (on_optimizer_step), so the forward reads nothing back.
        return cam_softmax_logits(cos, labels, self.c, validate=False)

    @torch.no_grad()
    def _adaptive_step(self) -> None:
        # Tensor ops only (torch.where instead of `if count > 0`), so no device-to-host sync per step.
        count = self.theta_count
        observed = self.c_policy.observe(self.theta_ema, self.theta_sum / count.clamp_min(1))
        self.theta_ema.copy_(torch.where(count > 0, observed.to(self.theta_ema.dtype), self.theta_ema))
        self.c.copy_(self.c_policy.update(self.c, self.theta_ema))
        self.theta_sum.zero_()
        self.theta_count.zero_()

    def on_optimizer_step(self) -> None:
        """Advances the step counter and sets c to the policy's value for it (or lets an adaptive policy update it)."""
        self.step.add_(1)
        self._host_step += 1
        if self.adaptive:
            self._adaptive_step()
            return
        value = self.c_policy.value(self._host_step)
        # The forward does not read c back from the device, so the range check has to happen when c is written.
        _check_c(f"cam-softmax c_policy.value({self._host_step}) of {self.c_policy!r}", value)
        self.c.fill_(value)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        step = state_dict.get(prefix + "step")
        if isinstance(step, torch.Tensor):  # a resumed run continues the schedule from the stored step (one read)
            self._host_step = int(step)

    def log_values(self) -> dict[str, torch.Tensor]:
        """Logs c as ``cam_c`` (a copy: the buffer is updated in place); adaptive policies add the EMA ``cam_theta``."""
        values = {"cam_c": self.c.detach().clone()}
        if self.adaptive:
            values["cam_theta"] = self.theta_ema.detach().clone()
        return values

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c_policy={self.c_policy!r}"
