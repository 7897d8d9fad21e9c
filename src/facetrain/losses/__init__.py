"""Classification heads (config group ``loss/``): each owns the class weights and returns loss, logits and cosines.

The margin formulas themselves are pure tensor functions in :mod:`facetrain.losses.functional`.
"""

from __future__ import annotations

from facetrain.losses.arcface import ArcFaceHead
from facetrain.losses.base import CosineHead, FaceHead, HeadOutput
from facetrain.losses.cam_softmax import CamSoftmaxHead, CPolicy, FixedC, LinearC
from facetrain.losses.cosface import CosFaceHead
from facetrain.losses.normface import NormFaceHead
from facetrain.losses.softmax import SoftmaxHead
from facetrain.losses.sphereface import SphereFaceHead

__all__ = [
    "ArcFaceHead",
    "CPolicy",
    "CamSoftmaxHead",
    "CosFaceHead",
    "CosineHead",
    "FaceHead",
    "FixedC",
    "HeadOutput",
    "LinearC",
    "NormFaceHead",
    "SoftmaxHead",
    "SphereFaceHead",
]
