"""Classification heads (config group ``loss/``): each owns the class weights and returns loss, logits and cosines.

The margin formulas themselves are pure tensor functions in :mod:`facetrain.losses.functional`.
"""

from __future__ import annotations

from facetrain.losses.adaface import AdaFaceHead
from facetrain.losses.arcface import ArcFaceHead
from facetrain.losses.base import CosineHead, FaceHead, HeadOutput
from facetrain.losses.cam_softmax import AdaptiveC, AdaptiveCPolicy, CamSoftmaxHead, CPolicy, FixedC, LinearC
from facetrain.losses.combined import CombinedMarginHead
from facetrain.losses.cosface import CosFaceHead
from facetrain.losses.curricularface import CurricularFaceHead
from facetrain.losses.magface import MagFaceHead
from facetrain.losses.normface import NormFaceHead
from facetrain.losses.softmax import SoftmaxHead
from facetrain.losses.sphereface import SphereFaceHead
from facetrain.losses.subcenter import SubCenterArcFaceHead

__all__ = [
    "AdaFaceHead",
    "AdaptiveC",
    "AdaptiveCPolicy",
    "ArcFaceHead",
    "CPolicy",
    "CamSoftmaxHead",
    "CombinedMarginHead",
    "CosFaceHead",
    "CosineHead",
    "CurricularFaceHead",
    "FaceHead",
    "FixedC",
    "HeadOutput",
    "LinearC",
    "MagFaceHead",
    "NormFaceHead",
    "SoftmaxHead",
    "SphereFaceHead",
    "SubCenterArcFaceHead",
]
