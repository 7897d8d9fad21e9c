"""ArcFace / additive angular margin head (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019).

L = −log( e^{s cos(θ_y + m)} / (e^{s cos(θ_y + m)} + Σ_{j≠y} e^{s cos θ_j}) ), defaults s = 64, m = 0.5 (the paper's
setting, also for CASIA-WebFace). For θ_y > π − m the target falls back to cos θ_y − m·sin(π − m) as in the InsightFace
reference code, which keeps it monotone in θ_y. Gradients are the analytic ones (the current arcface_torch computes the
margin under ``no_grad``, i.e. a straight-through variant; see insightface issue #2309).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facetrain.losses.base import ANGULAR_MARGIN, CosineHead
from facetrain.losses.functional import arcface_logits
from facetrain.utils.rules import Constraint, OneOf, check_args

__all__ = ["ArcFaceHead"]


class ArcFaceHead(CosineHead):
    """Additive angular margin: target logit s·cos(θ_y + m).

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        margin: Angular margin m in [0, π) radians (m = 0 is NormFace).
        easy_margin: Apply the margin only to targets with cos θ_y > 0 (InsightFace option).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "margin": ANGULAR_MARGIN,
        "easy_margin": OneOf((True, False)),
    }

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.m = float(margin)
        self.easy_margin = bool(easy_margin)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adds m to the target angles."""
        return arcface_logits(cos, labels, self.m, self.easy_margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}, easy_margin={self.easy_margin}"
