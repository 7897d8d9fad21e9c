"""The one embedding path: a backbone's raw embeddings of a batch, shared by training, evaluation and ``evaluate.py``.

:class:`BackboneEmbedding` holds ``embed`` once. :class:`~facetrain.models.module.FaceRecognitionModule` mixes it in
(training steps and the evaluation callbacks call it); :class:`EmbeddingModel` is the same network without the margin
head, what ``evaluate.py`` rebuilds from a checkpoint (the head's shape depends on the training class count and
evaluation never uses it).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BackboneEmbedding", "EmbeddingModel"]


class BackboneEmbedding:
    """``embed(images)``: raw (un-normalised) embeddings from ``self.backbone``, the batch in its memory format.

    The evaluation callbacks normalise after optional flip fusion; :meth:`FaceRecognitionModule.forward` normalises
    for inference.
    """

    backbone: nn.Module
    #: Feed the backbone channels-last (NHWC) batches (``model.channels_last``).
    channels_last: bool = False

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of a batch of images."""
        return self.backbone(self._layout(images))

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        """The batch in the backbone's memory format (a no-op copy-free view when it already is)."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images


class EmbeddingModel(BackboneEmbedding, nn.Module):
    """A backbone behind the interface the evaluation callbacks use: ``embed`` and ``device``.

    Args:
        backbone: The embedding network (weights already loaded).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def device(self) -> torch.device:
        """Device of the weights (CPU for an exported model run by its own runtime)."""
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
