"""Common interface of the classification heads: a head owns the class weights and returns loss, logits and cosines.

``CosineHead`` is the normalised-softmax skeleton shared by NormFace, SphereFace, CosFace, ArcFace and cam-softmax:
logits = s · margin(cos θ, y) with cos θ = x̂·ŵ_j (Wang et al., NormFace, ACM MM 2017); subclasses only supply
``margin`` from :mod:`facetrain.losses.functional`.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.utils.rules import POSITIVE, Constraint, Interval, OneOf, check_args

__all__ = ["ANGULAR_MARGIN", "CosineHead", "FaceHead", "HeadOutput"]

#: An additive angular margin m in [0, π): θ + m must stay below π for the target logit to fall as θ grows.
ANGULAR_MARGIN = Interval(0.0, math.pi, high_open=True)


class HeadOutput(NamedTuple):
    """What every head returns.

    Attributes:
        loss: Scalar cross-entropy loss averaged over the batch.
        logits: B×C logits fed to the cross-entropy, already margin-adjusted and scaled.
        cosine: B×C cosines between the L2-normalised embeddings and class weights (for accuracy and logging).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    cosine: torch.Tensor


class FaceHead(nn.Module):
    """Base class of all heads: ``forward(embeddings, labels) -> HeadOutput`` plus hooks for the training module.

    Valid argument values are declared once, in the ``config_constraints`` class attribute (rules of
    :mod:`facetrain.utils.schema`): :func:`~facetrain.utils.schema.validate_config` checks them per config key before
    the data is read, and each constructor enforces the same declaration with one ``check_args(self, locals())``
    call (relations between arguments: a ``check_config`` classmethod, called by both). Nothing is checked in
    ``forward``.

    Args:
        nan_check: ``loss.nan_check``: the training module stops with ``FloatingPointError`` naming the global step as
            soon as this head's loss is NaN or infinite (one host sync per step; false turns it off).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {"nan_check": OneOf((True, False))}

    def __init__(self, nan_check: bool = True) -> None:
        super().__init__()
        check_args(self, locals())
        self.nan_check = nan_check

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Computes the loss of a batch.

        Args:
            embeddings: Backbone embeddings (B×D), not normalised.
            labels: Class labels (B,).

        Returns:
            Loss, scaled logits and cosines.
        """
        raise NotImplementedError

    def on_fit_start(self, total_steps: float) -> None:
        """Receives the run's optimizer-step count (may be inf) once, before training; for schedules over the run."""

    def on_optimizer_step(self) -> None:
        """Advances schedules kept in buffers; the training module calls it after every optimizer step."""

    def at_step(self, step: int, total_steps: int) -> FaceHead | None:
        """A copy as after ``step`` of ``total_steps`` optimizer steps; None when the margin has no step schedule."""
        del step, total_steps
        return None

    def log_values(self) -> dict[str, torch.Tensor]:
        """Scalars to log every step (e.g. the current margin hyper-parameter); empty by default."""
        return {}

    # Hooks of the sharded classifier (facetrain.classifier); no-ops for a head that holds every class.
    def configure_shards(self) -> bool:
        """Lays out parameters split over the ranks once the process group exists (the module's ``configure_model``).

        Returns:
            True when the head holds only this rank's share, so DDP must neither all-reduce nor broadcast it.
        """
        return False

    def step_rows(self, optimizer: torch.optim.Optimizer, found_inf: torch.Tensor | None = None) -> None:
        """Updates the rows the head steps itself after the backward (Partial FC's sampled class centres)."""
        del optimizer, found_inf

    def target_and_nearest(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Target and nearest non-target cosines of the last forward when ``HeadOutput.cosine`` does not hold every
        class; None: the training module takes them from ``cosine``."""
        return None


class CosineHead(FaceHead):
    """Normalised-softmax head: logits = s · margin(cos θ, y), loss = cross-entropy(logits, y).

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0. ``None`` keeps the features un-normalised in the logits, i.e. the scale is the
            per-sample feature norm ‖x‖ (original A-Softmax); only heads that document it should allow ``None``.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    #: A subclass whose ``scale`` may be None (‖x‖ scaling) overrides ``scale`` with ``allow_none=True``.
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **FaceHead.config_constraints,
        "embedding_size": Interval(1, integer=True),
        "num_classes": Interval(2, integer=True),
        "scale": POSITIVE,
    }

    def __init__(self, embedding_size: int, num_classes: int, scale: float | None, nan_check: bool = True) -> None:
        check_args(self, locals())  # the subclass's rules: its scale may admit None
        super().__init__(nan_check)
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.scale = None if scale is None else float(scale)
        # N(0, 0.01) as in InsightFace's Partial FC; rows are re-normalised in every forward, so only directions matter.
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines x̂·ŵ_j between L2-normalised embeddings (B×D) and class weights, shape B×C."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor | float:
        """The factor s applied after the margin: the fixed scale, or ‖x‖ (B×1) when ``scale`` is None."""
        if self.scale is None:
            return embeddings.norm(dim=1, keepdim=True)
        return self.scale

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted cosines (B×C) before scaling; implemented by each head with a ``functional`` form."""
        raise NotImplementedError

    def observe(self, cos: torch.Tensor, labels: torch.Tensor) -> None:
        """Records batch statistics kept in buffers (training mode only, before the margin); no-op by default.

        Keeping these updates out of :meth:`margin` lets validation passes and margin-curve probes call ``margin``
        without side effects.
        """

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Computes logits = s · margin(cos, labels) and their cross-entropy.

        Args:
            embeddings: Backbone embeddings (B×D), not normalised.
            labels: Class labels (B,).

        Returns:
            Loss, scaled logits and cosines.
        """
        cos = self.cosine(embeddings)
        if self.training:
            self.observe(cos, labels)
        logits = self.logit_scale(embeddings) * self.margin(cos, labels)
        return HeadOutput(F.cross_entropy(logits, labels), logits, cos)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, scale={self.scale}"
