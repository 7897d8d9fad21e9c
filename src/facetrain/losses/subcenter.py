"""Sub-center ArcFace head (Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
Faces", ECCV 2020).

Each class has K sub-centres; the class cosine is the maximum over its sub-centres (Eq. 2) and ArcFace's additive
angular margin is applied to it, target logit s·cos(θ_y + m). Noisy samples can then gather around non-dominant
sub-centres instead of pulling the dominant one. Defaults K = 3, s = 64, m = 0.5 (the paper's setting). The weight is
(K·C)×D with row c·K + j = sub-centre j of class c, as in InsightFace.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.losses.base import ANGULAR_MARGIN, CosineHead
from facetrain.losses.functional import arcface_logits, subcenter_max
from facetrain.utils.rules import Constraint, Interval, check_args

__all__ = ["SubCenterArcFaceHead"]


class SubCenterArcFaceHead(CosineHead):
    """ArcFace on the per-class max over K sub-centres; ``cosine`` in the output is that per-class max (B×C).

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        margin: Angular margin m in [0, π).
        k: Sub-centres per class, integer >= 1 (k = 1 is ArcFace).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "margin": ANGULAR_MARGIN,
        "k": Interval(1, integer=True),
    }

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        k: int = 3,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.k = k
        self.m = float(margin)
        # Replaces the C×D weight of CosineHead; same N(0, 0.01) init.
        self.weight = nn.Parameter(torch.empty(self.num_classes * self.k, self.embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def subcenter_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines to every sub-centre, B×(C·K)."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-class max over the sub-centres, B×C."""
        return subcenter_max(self.subcenter_cosine(embeddings), self.k)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ArcFace margin on the per-class max cosines."""
        return arcface_logits(cos, labels, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}, k={self.k}"
