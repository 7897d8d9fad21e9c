"""CurricularFace head (Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition",
CVPR 2020).

Target logit s·cos(θ_y + m) (ArcFace, with the InsightFace fallback for θ_y + m > π); every hard negative
(cos θ_j > cos(θ_y + m)) gets the logit s·cos θ_j·(t + cos θ_j) (Eq. 9). t is the adaptive curriculum parameter,
t ← α·r + (1 − α)·t with r the batch mean of the target cosines and α = 0.01, t₀ = 0 (Eq. 10). Early in training t ≈ 0
and hard negatives are down-weighted (easy samples first); as t grows they are emphasised. Defaults s = 64, m = 0.5,
α = 0.01 as in the paper and the official code (github HuangYG123/CurricularFace, ``head/metrics.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facetrain.losses.base import ANGULAR_MARGIN, CosineHead
from facetrain.losses.functional import curricularface_logits
from facetrain.utils.rules import PROBABILITY, Constraint, Interval, check_args

__all__ = ["CurricularFaceHead"]


class CurricularFaceHead(CosineHead):
    """CurricularFace with t kept in a buffer (saved in checkpoints, so a resumed run continues the same curriculum).

    As in the official code, t is updated in every training forward *before* the logits of that batch are computed; in
    eval mode t is read but not updated, so validation passes leave the curriculum alone. :meth:`margin` itself has no
    side effects, so callers that probe the margin curve (e.g. the head-curves callback) do not disturb t.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        margin: Additive angular margin m in [0, π).
        momentum: EMA weight α in [0, 1] of the current batch in the update of t.
        t_init: Initial t (0 in the paper).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "margin": ANGULAR_MARGIN,
        "momentum": PROBABILITY,
        "t_init": Interval(-1.0, 1.0),
    }

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        momentum: float = 0.01,
        t_init: float = 0.0,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.m = float(margin)
        self.momentum = float(momentum)
        self.register_buffer("t", torch.tensor(float(t_init), dtype=torch.float32))

    @torch.no_grad()
    def observe(self, cos: torch.Tensor, labels: torch.Tensor) -> None:
        """Updates t from the batch before its logits, as the official code does."""
        # r = mean target cosine of the batch (Eq. 10); float32 so a bf16 forward does not quantise the EMA.
        r = cos.gather(1, labels.reshape(-1, 1).long()).float().clamp(-1.0, 1.0).mean()
        self.t.mul_(1.0 - self.momentum).add_(self.momentum * r.to(self.t.dtype))

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target margin and hard-negative reweighting with the current t; no side effects (t is updated in forward)."""
        return curricularface_logits(cos, labels, self.m, self.t)

    def log_values(self) -> dict[str, torch.Tensor]:
        """Logs the curriculum parameter as ``curricular_t``."""
        return {"curricular_t": self.t.detach().clone()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}, momentum={self.momentum}"
