"""Cam-softmax head (Suveges & McKenna, "Cam-Softmax for Discriminative Deep Feature Learning", ICPR 2020).

Features and class weights are L2-normalised; the target cosine goes through f(cos) = 2·((cos + 1)/2)^c′ − 1 with
c′ = 1/(1 − log2(cos c + 1)), the other logits stay s·cos θ_j (official code github stamas02/cam-softmax,
``src/cam_loss.py``, default s = 20). f(cos c) = 0, f(±1) = ±1, and c = π/2 is plain normalised softmax; lowering c
strengthens the penalty on the target.

The paper's abstract describes an algorithm that adapts c automatically during training; it is not published and the
official code instead anneals c linearly per optimizer step, c ← max(π/4, c − 1e-4) from π/2 (``train.py``), which
:class:`LinearC` with ``run_fraction=None`` reproduces; ``LinearC(run_fraction=r)`` reaches the same stop at the
fraction r of the run's length instead (the config default, for runs too short for the official rate). Schedules are
small policy objects (:mod:`facetrain.losses.cam_c_policies`) so that another rule can be plugged in.

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

import copy
import logging
import math
from typing import Any, ClassVar

import torch

from facetrain.losses.base import CosineHead, FaceHead
from facetrain.losses.cam_c_policies import C_RANGE, AdaptiveC, AdaptiveCPolicy, CPolicy, FixedC, LinearC
from facetrain.losses.functional import cam_softmax_logits
from facetrain.utils.rules import Constraint, check_args, check_value

# The policies live in cam_c_policies; importing them from here keeps working.
__all__ = ["AdaptiveC", "AdaptiveCPolicy", "CPolicy", "CamSoftmaxHead", "FixedC", "LinearC"]

log = logging.getLogger(__name__)


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
            per step. A policy with ``uses_run_length`` (``LinearC(run_fraction=...)``) also gets the run's length
            from :meth:`on_fit_start`, stored in the ``total_steps`` buffer.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {**CosineHead.config_constraints}

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 20.0,
        c_policy: CPolicy | AdaptiveCPolicy | None = None,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        policy = LinearC() if c_policy is None else c_policy
        adaptive = isinstance(policy, AdaptiveCPolicy)
        if not adaptive and not isinstance(policy, CPolicy):
            raise ValueError(
                f"cam-softmax c_policy must have initial() and value(step), or initial(), observe() and update(), "
                f"got {policy!r}"
            )
        initial = policy.initial()
        # The built-in policies checked their own keys; this catches a custom policy, once, with the same rule.
        check_value(f"{type(self).__name__}.c_policy.initial() of {policy!r}", initial, C_RANGE)
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
        # A schedule over the run's length stores that length (0 = not yet known) beside the step, so a resumed run
        # computes the same c values whatever the resumed trainer would estimate. Only such heads have the buffer, so
        # the checkpoints of the other policies keep their keys.
        self.uses_run_length = bool(getattr(policy, "uses_run_length", False))
        self._host_total: int | None = None
        if self.uses_run_length:
            self.register_buffer("total_steps", torch.zeros((), dtype=torch.int64))

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
        return cam_softmax_logits(cos, labels, self.c)

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
        self.c.fill_(self._policy_value(self._host_step))

    def _policy_value(self, step: int) -> float:
        # No range check per step: a policy's values lie between its start and floor, checked when it was built.
        return self.c_policy.value(step, self._host_total)

    def on_fit_start(self, total_steps: float) -> None:
        """Fixes the run's length for a schedule defined over it (``loss.c_policy.run_fraction``); else nothing.

        The first fit stores ``total_steps``; a head restored from a checkpoint keeps the stored length, so a resumed
        run continues the identical c sequence (a resume with a longer ``trainer.max_epochs`` keeps the original
        schedule, and says so).

        Args:
            total_steps: Optimizer steps of the whole run (``trainer.estimated_stepping_batches``; may be inf).
        """
        if not self.uses_run_length:
            return
        if not (math.isfinite(total_steps) and total_steps >= 1):
            raise ValueError(
                f"loss.c_policy.run_fraction={self.c_policy.run_fraction!r} needs a finite run length "
                f"(trainer.max_epochs or trainer.max_steps), got {total_steps!r} optimizer steps"
            )
        if self._host_total is None:
            self._host_total = int(total_steps)
            self.total_steps.fill_(self._host_total)
        elif self._host_total != int(total_steps):
            log.info(
                "cam-softmax: keeping the stored run length of %d optimizer steps for the c schedule (this run: %d)",
                self._host_total,
                int(total_steps),
            )

    def at_step(self, step: int, total_steps: int) -> FaceHead | None:
        """A copy of this head with c as after ``step`` optimizer steps (None for an adaptive, data-driven policy).

        Args:
            step: Optimizer steps taken.
            total_steps: The run's length, used when this head has not stored one yet.
        """
        if self.adaptive:
            return None
        head = copy.deepcopy(self)
        if head.uses_run_length and head._host_total is None:
            head.on_fit_start(total_steps)
        head.step.fill_(step)
        head._host_step = int(step)
        head.c.fill_(head._policy_value(int(step)))
        return head

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        step = state_dict.get(prefix + "step")
        if isinstance(step, torch.Tensor):  # a resumed run continues the schedule from the stored step (one read)
            self._host_step = int(step)
        total = state_dict.get(prefix + "total_steps")
        if self.uses_run_length and isinstance(total, torch.Tensor) and int(total) > 0:
            self._host_total = int(total)

    def log_values(self) -> dict[str, torch.Tensor]:
        """Logs c as ``cam_c`` (a copy: the buffer is updated in place); adaptive policies add the EMA ``cam_theta``."""
        values = {"cam_c": self.c.detach().clone()}
        if self.adaptive:
            values["cam_theta"] = self.theta_ema.detach().clone()
        return values

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c_policy={self.c_policy!r}"
