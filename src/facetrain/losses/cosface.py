"""CosFace / large-margin cosine loss head (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
Recognition", CVPR 2018; the same loss as AM-Softmax, Wang et al., IEEE SPL 2018).

LMCL: L = −log( e^{s(cos θ_y − m)} / (e^{s(cos θ_y − m)} + Σ_{j≠y} e^{s cos θ_j}) ). Defaults s = 64, m = 0.35 are the
paper's CASIA-WebFace setting.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facetrain.losses.base import CosineHead
from facetrain.losses.functional import cosface_logits
from facetrain.utils.rules import NON_NEGATIVE, Constraint, check_args

__all__ = ["CosFaceHead"]


class CosFaceHead(CosineHead):
    """Additive cosine margin: target logit s·(cos θ_y − m).

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        margin: Cosine margin m >= 0 (m = 0 is NormFace).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {**CosineHead.config_constraints, "margin": NON_NEGATIVE}

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35, nan_check: bool = True
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.m = float(margin)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Subtracts m from the target cosines."""
        return cosface_logits(cos, labels, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}"
