"""Plain softmax classifier head: an un-normalised linear layer followed by cross-entropy.

The baseline of every margin paper ("Softmax" rows of SphereFace, CosFace and ArcFace tables): logits = W·x + b.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.losses.base import FaceHead, HeadOutput
from facetrain.utils.rules import Constraint, Interval, OneOf, check_args

__all__ = ["SoftmaxHead"]


class SoftmaxHead(FaceHead):
    """Linear layer + cross-entropy; cosines are computed without gradient, for logging and accuracy only.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        bias: Whether the linear layer has a bias.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **FaceHead.config_constraints,
        "embedding_size": Interval(1, integer=True),
        "num_classes": Interval(2, integer=True),
        "bias": OneOf((True, False)),
    }

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True, nan_check: bool = True) -> None:
        check_args(self, locals())
        super().__init__(nan_check)
        self.fc = nn.Linear(embedding_size, num_classes, bias=bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Computes logits = W·x + b and their cross-entropy.

        Args:
            embeddings: Backbone embeddings (B×D).
            labels: Class labels (B,).

        Returns:
            Loss, logits and (gradient-free) cosines.
        """
        logits = self.fc(embeddings)
        with torch.no_grad():
            cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.fc.weight, dim=1))
        return HeadOutput(F.cross_entropy(logits, labels), logits, cos)
