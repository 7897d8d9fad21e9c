"""Face backbones: any timm model as a trunk, followed by the standard face embedding neck.

The neck is the "output layer E" of ArcFace (Deng et al., CVPR 2019, §3.2 / Table 1): BatchNorm → Dropout → flatten →
fully connected → BatchNorm, applied to the *unpooled* last feature map, so the spatial layout of an aligned face is
kept (global pooling throws it away and costs accuracy on aligned faces).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import facetrain.models.face_backbones  # noqa: F401  (registers iresnet*, sphereface20, mobilefacenet in timm)


def _unknown_model_error(model_name: str) -> ValueError:
    names = timm.list_models()
    close = difflib.get_close_matches(model_name, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(
        f"backbone.model_name={model_name!r} is not a timm model.{hint} "
        "`python -c \"import timm; print(timm.list_models('*resnet*'))\"` lists the available names."
    )


def input_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a crop given as one side (112) or ``[height, width]`` (``[112, 96]``)."""
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = (int(v) for v in input_size)
    return height, width


def create_trunk(
    model_name: str,
    pretrained: bool,
    input_size: int | Sequence[int],
    pretrained_file: str | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a timm model that returns its unpooled final features for ``input_size`` inputs.

    Transformers fixed to 224 px (ViT, DeiT, ...) are rebuilt with ``img_size=input_size``; convolutional models
    take any size. timm drops keyword arguments whose value is None, so unset config keys keep timm's defaults.
    ``pretrained_file`` loads timm weights from a local file through timm's own loader
    (``pretrained_cfg_overlay=dict(file=...)``: classifier dropped, input conv adapted), for clusters without hub
    access.

    Raises:
        ValueError: The name is not a timm model, or the model cannot run at ``input_size``.
        FileNotFoundError: ``pretrained_file`` does not exist.
    """
    if not timm.is_model(model_name):
        raise _unknown_model_error(model_name)
    kwargs = {"pretrained": pretrained, "num_classes": 0, "global_pool": "", **timm_kwargs}
    if pretrained_file:
        if not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"backbone.pretrained_file={pretrained_file!r} is not a file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)})
    model = timm.create_model(model_name, **kwargs)
    try:
        _probe(model, input_size)
    except (RuntimeError, AssertionError, ValueError) as first_error:
        try:
            model = timm.create_model(model_name, img_size=input_hw(input_size), **kwargs)
            _probe(model, input_size)
        except Exception as error:  # noqa: BLE001 - re-raised with the context a user needs
            raise ValueError(
                f"timm model {model_name!r} cannot run on {'x'.join(map(str, input_hw(input_size)))} faces: "
                f"{first_error}"
            ) from error
    return model


@torch.no_grad()
def _probe(model: nn.Module, input_size: int | Sequence[int]) -> torch.Tensor:
    was_training = model.training
    model.eval()  # BatchNorm in train mode refuses a batch of one
    out = model(torch.zeros(1, 3, *input_hw(input_size)))
    model.train(was_training)
    return out


class FaceBackbone(nn.Module):
    """timm trunk + BN-Dropout-FC-BN embedding neck.

    Args:
        model_name: Any name from ``timm.list_models()``.
        embedding_size: Width of the face embedding (512 in ArcFace/InsightFace).
        pretrained: Load timm's pretrained weights (needs network access; off by default).
        pretrained_file: Load timm's pretrained weights from this local file instead (``.pth``/``.safetensors``
            as timm publishes them); no network needed.
        dropout: Dropout before the FC layer of the neck (ArcFace uses 0 on large data, 0.4 on CASIA).
        input_size: Side of the square aligned face crop (112 by convention), or ``[height, width]`` (``[112, 96]``
            for SphereFace-style crops).
        **timm_kwargs: Forwarded to ``timm.create_model`` (e.g. ``drop_path_rate``, ``output_stride``).
    """

    def __init__(
        self,
        model_name: str,
        embedding_size: int = 512,
        pretrained: bool = False,
        dropout: float = 0.0,
        input_size: int | Sequence[int] = 112,
        pretrained_file: str | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"backbone.embedding_size must be >= 1, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {dropout}")
        self.model_name = model_name
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.trunk = create_trunk(model_name, pretrained, input_size, pretrained_file, **timm_kwargs)
        feature_shape = tuple(_probe(self.trunk, input_size).shape[1:])
        flat = 1
        for d in feature_shape:
            flat *= d
        # BatchNorm2d over channels for CNN maps (ArcFace's "E" layer); over the flattened tokens otherwise.
        self.norm = nn.BatchNorm2d(feature_shape[0]) if len(feature_shape) == 3 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(flat, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images to un-normalised ``(B, embedding_size)`` embeddings."""
        x = self.norm(self.trunk(images))
        x = self.dropout(torch.flatten(x, 1))
        return self.features(self.fc(x))
