"""Classification heads (config group ``loss/``): each owns the class weights and returns loss, logits and cosines.

Vocabulary: ``loss=<name>`` on the command line selects a *head*; a head (a ``*Head`` class, the training module's
``head`` argument) is the module that owns the class weights and returns the loss. The config group keeps the
user-facing word ``loss`` (every command line, sweep and stored config uses it); the code says head.
The margin formulas themselves are pure tensor functions in :mod:`facetrain.losses.functional`; the cam-softmax
c schedules are in :mod:`facetrain.losses.cam_c_policies`.
"""

from __future__ import annotations

from facetrain.losses.adaface import AdaFaceHead
from facetrain.losses.arcface import ArcFaceHead
from facetrain.losses.base import CosineHead, FaceHead, HeadOutput
from facetrain.losses.cam_c_policies import AdaptiveC, AdaptiveCPolicy, CPolicy, FixedC, LinearC
from facetrain.losses.cam_softmax import CamSoftmaxHead
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
