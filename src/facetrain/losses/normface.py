"""NormFace head: softmax on cosines with a fixed scale (Wang et al., "NormFace: L2 Hypersphere Embedding for Face
Verification", ACM MM 2017).

Both features and class weights are L2-normalised and the logits are s·cos θ_j; s (default 20) compensates for the
bounded range of cosines. It is the c = π/2 limit of cam-softmax and the m = 0 limit of CosFace/ArcFace.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from facetrain.losses.base import CosineHead
from facetrain.losses.functional import normface_logits
from facetrain.utils.rules import Constraint

__all__ = ["NormFaceHead"]


class NormFaceHead(CosineHead):
    """Normalised softmax, logits = s·cos θ_j.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0 (ArcFace's CASIA ablation reports s = 20 better than s = 64 for this loss).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {**CosineHead.config_constraints}

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 20.0, nan_check: bool = True) -> None:
        super().__init__(embedding_size, num_classes, scale, nan_check)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Returns the cosines unchanged."""
        return normface_logits(cos, labels)
