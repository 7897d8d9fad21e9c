"""Combined margin head (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019,
Eq. 4).

Target logit s·(cos(m1·θ_y + m2) − m3), unifying SphereFace (m1), ArcFace (m2) and CosFace (m3). The defaults
s = 64, (m1, m2, m3) = (1.0, 0.3, 0.2) are the paper's "CM1" combination and InsightFace's MXNet combined setting
(``--loss-type 5 --margin-a 1.0 --margin-m 0.3 --margin-b 0.2``). The current arcface_torch ``CombinedMarginLoss``
implements only the ArcFace and CosFace branches; the full form and its monotone fallback for m1·θ_y + m2 > π are
described in :func:`facetrain.losses.functional.combined_logits`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facetrain.losses.base import ANGULAR_MARGIN, CosineHead
from facetrain.losses.functional import combined_logits
from facetrain.utils.rules import NON_NEGATIVE, Constraint, Interval, check_args

__all__ = ["CombinedMarginHead"]


class CombinedMarginHead(CosineHead):
    """Combined margin: target logit s·(cos(m1·θ_y + m2) − m3).

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        m1: Multiplicative angular margin >= 1.
        m2: Additive angular margin in [0, π) radians.
        m3: Additive cosine margin >= 0.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "m1": Interval(1.0),
        "m2": ANGULAR_MARGIN,
        "m3": NON_NEGATIVE,
    }

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Applies cos(m1·θ_y + m2) − m3 to the target cosines."""
        return combined_logits(cos, labels, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"
