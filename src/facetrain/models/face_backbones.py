"""Face-recognition trunks registered in timm's model registry: IResNet, SphereFace-20 and MobileFaceNet.

Importing this module registers ``iresnet18``, ``iresnet34``, ``iresnet50``, ``iresnet100``, ``sphereface20`` and
``mobilefacenet`` with :func:`timm.models.register_model`, so ``timm.create_model(name, num_classes=0,
global_pool='')`` (what :class:`facetrain.models.backbone.FaceBackbone` calls) builds them like any timm model and
``backbone.model_name=iresnet50`` works from the config. They follow timm's classifier API (``num_features``,
``forward_features``, ``forward_head``, ``reset_classifier``, ``feature_info``); with ``global_pool=''`` and
``num_classes=0`` the forward pass returns the unpooled last feature map, which FaceBackbone's BN-Dropout-FC-BN
neck turns into the embedding. No pretrained weights are shipped.

Architectures (written from the published layer specifications):

* **IResNet** (Deng et al., ArcFace, CVPR 2019, §3.2 "improved residual unit"; layout of InsightFace
  ``recognition/arcface_torch/backbones/iresnet.py``): 3×3 stride-1 stem conv-BN-PReLU, four stages of
  ``IBasicBlock`` = BN-conv3×3-BN-PReLU-conv3×3(stride)-BN plus a projection shortcut, widths 64-128-256-512, each
  stage halving the resolution (112×112 → 512×7×7). Blocks per stage: 18 [2,2,2,2], 34 [3,4,6,3], 50 [3,4,14,3],
  100 [3,13,30,3]. InsightFace's "output layer" (BN-Dropout-FC-BN) is FaceBackbone's neck, so
  ``FaceBackbone("iresnet50", embedding_size=512)`` is the whole InsightFace IResNet-50.
* **SphereFace-20** (Liu et al., CVPR 2017, Table 2; ``wy1iu/sphereface`` ``train/code/sphereface_model.prototxt``
  [S4], ported to PyTorch as ``sphere20a`` in the official cam-softmax code ``src/sphereface20.py`` [S3]): four
  stages of a stride-2 conv3×3+PReLU followed by 1-2-4-1 residual units ``x + PReLU(conv(PReLU(conv(x))))`` at
  64-128-256-512 channels, **no BatchNorm**. 112×96 → 512×7×6.
* **MobileFaceNet** (Chen et al., CCBR 2018, Table 1): conv3×3/2 (64), depthwise conv3×3 (64), inverted-residual
  bottlenecks (t, c, n, s) = (2,64,5,2) (4,128,1,2) (2,128,6,1) (4,128,1,2) (2,128,2,1), conv1×1 (512) and the
  linear global depthwise convolution (GDConv) over the whole 7×7 map; BN after every conv, PReLU activations.
  The trunk ends after GDConv (512×1×1): FaceBackbone's FC + BN then play the paper's final linear 1×1 conv (128)
  + BN, instead of a 512·49 × d FC that would be three times the size of the whole network.

The ``[Sx]`` tags refer to the sources in ``docs/protocols.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["IBasicBlock", "IResNet", "MobileFaceNet", "SphereFace", "face_model_names"]

_FACE_MEAN = (0.5, 0.5, 0.5)  # (x/255 - 0.5)/0.5: InsightFace and the cam-softmax code [S28][S3]
_FACE_STD = (0.5, 0.5, 0.5)


class _FaceTrunk(nn.Module):
    """timm's classifier interface around a face trunk (``self.stem`` then ``self.stages``).

    Subclasses build ``stem`` and ``stages`` and set ``num_features`` and ``feature_info`` before calling
    :meth:`_init_head`.
    """

    num_features: int
    feature_info: list[dict[str, Any]]
    stem: nn.Module
    stages: nn.Sequential

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head_hidden_size = self.num_features
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    def get_classifier(self) -> nn.Module:
        """The classifier layer (Identity when ``num_classes=0``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (timm API); ``num_classes=0, global_pool=''`` leaves the feature map."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` → unpooled last feature map ``(B, num_features, h, w)``."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (unless ``global_pool=''``) and classify (unless ``num_classes=0`` or ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- IResNet ------------------------------------------------------------------------------------------------------


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=bias)


class IBasicBlock(nn.Module):
    """ArcFace's improved residual unit: BN-conv3×3-BN-PReLU-conv3×3(stride)-BN, plus the shortcut.

    The stride sits on the second conv and there is no activation after the addition (ArcFace §3.2): the
    pre-activation BN and the final BN keep the residual branch well scaled without a ReLU cutting it.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs, eps=1e-5)
        self.conv1 = _conv3x3(in_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs, eps=1e-5)
        self.prelu = nn.PReLU(out_chs)
        self.conv2 = _conv3x3(out_chs, out_chs, stride)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chs, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(_FaceTrunk):
    """IResNet trunk (InsightFace arcface_torch layout), up to the last stage's 512-channel map.

    Args:
        layers: Blocks per stage, e.g. ``(3, 4, 14, 3)`` for IResNet-50.
        widths: Channels per stage.
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for none (a feature trunk).
        global_pool: timm pool type; ``''`` keeps the unpooled map.
        drop_rate: Dropout before the classifier (only with ``num_classes > 0``).

    Convolutions start from InsightFace's N(0, 0.1). With BatchNorm after every conv that scale does not change the
    trained function, but it sets the early effective learning rate of the recipe. An *untrained* deep IResNet in
    eval mode (BN running statistics still 0 and 1) overflows with it, as InsightFace's does; train first.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"IResNet: layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self.stem = nn.Sequential(
            _conv3x3(in_chans, widths[0]), nn.BatchNorm2d(widths[0], eps=1e-5), nn.PReLU(widths[0])
        )
        stages, in_chs, reduction = [], widths[0], 1
        self.feature_info = []
        for i, (depth, width) in enumerate(zip(layers, widths)):
            blocks = [IBasicBlock(in_chs, width, stride=2)] + [IBasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_chs, reduction = width, reduction * 2
            self.feature_info.append({"num_chs": width, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self._init_head(num_classes, global_pool, drop_rate)
        for m in self.modules():
            # InsightFace's initialisation: N(0, 0.1) convs; BN starts at identity.
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# -- SphereFace-20 ------------------------------------------------------------------------------------------------


class _SphereResidual(nn.Module):
    """``x + PReLU(conv(PReLU(conv(x))))`` with no normalisation (SphereFace's residual unit)."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        # Caffe fills these convs' biases with 0 at lr_mult 0 (never learned) [S4]: no bias is the same model.
        self.conv1 = _conv3x3(chs, chs)
        self.act1 = nn.PReLU(chs)
        self.conv2 = _conv3x3(chs, chs)
        self.act2 = nn.PReLU(chs)
        for conv in (self.conv1, self.conv2):
            # Gaussian std 0.01 [S4]: without BN the residual branch must start small so the sum stays near x.
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class SphereFace(_FaceTrunk):
    """SphereFace residual CNN without BatchNorm (SphereFace-20 with the default ``layers=(1, 2, 4, 1)``).

    Args:
        layers: Residual units per stage after its stride-2 conv (SphereFace-20: 1-2-4-1; -36: 2-4-8-2 [Liu 2017]).
        widths: Channels per stage.
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for none (a feature trunk).
        global_pool: timm pool type; ``''`` keeps the unpooled map.
        drop_rate: Dropout before the classifier (only with ``num_classes > 0``).
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 2, 4, 1),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"SphereFace: layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self.stem = nn.Identity()  # the first stage's stride-2 conv is the stem
        stages, in_chs, reduction = [], in_chans, 1
        self.feature_info = []
        for i, (depth, width) in enumerate(zip(layers, widths)):
            down = _conv3x3(in_chs, width, stride=2, bias=True)
            # Caffe's "xavier" filler is U(±sqrt(3 / fan_in)) [S4] = kaiming_uniform with a=1 (gain 1).
            nn.init.kaiming_uniform_(down.weight, a=1.0)
            nn.init.zeros_(down.bias)
            stages.append(nn.Sequential(down, nn.PReLU(width), *[_SphereResidual(width) for _ in range(depth)]))
            in_chs, reduction = width, reduction * 2
            self.feature_info.append({"num_chs": width, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self._init_head(num_classes, global_pool, drop_rate)


# -- MobileFaceNet ------------------------------------------------------------------------------------------------


def _conv_bn(in_chs: int, out_chs: int, kernel: int | tuple[int, int], stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:  # fmt: skip
    """conv (no bias) → BN → PReLU (omitted for MobileFaceNet's *linear* layers)."""
    pad = 0 if isinstance(kernel, tuple) else kernel // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
    ]
    if act:
        layers.append(nn.PReLU(out_chs))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """MobileNetV2 inverted residual with PReLU: 1×1 expand, 3×3 depthwise (stride), linear 1×1 project."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.conv = nn.Sequential(
            _conv_bn(in_chs, mid, 1),
            _conv_bn(mid, mid, 3, stride=stride, groups=mid),
            _conv_bn(mid, out_chs, 1, act=False),
        )
        self.use_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expansion t, channels c, repeats n, first stride s), Chen et al. 2018, Table 1.
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class MobileFaceNet(_FaceTrunk):
    """MobileFaceNet trunk up to and including the linear global depthwise conv (GDConv), 512×1×1.

    Args:
        img_size: Input ``(height, width)`` or side; sets the GDConv kernel to the final map size (7×7 at 112×112,
            7×6 at 112×96), as the GDConv is by definition a per-channel weighting of the *whole* map.
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for none (a feature trunk).
        global_pool: timm pool type; ``''`` keeps the (1×1) map.
        drop_rate: Dropout before the classifier (only with ``num_classes > 0``).
        width: Channels of the conv1×1 expansion before GDConv (512 in the paper).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 112,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        width: int = 512,
    ) -> None:
        super().__init__()
        height, wide = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        # Four stride-2 layers with padding: each maps n to ceil(n / 2).
        kernel = (math.ceil(height / 16), math.ceil(wide / 16))
        self.stem = nn.Sequential(_conv_bn(in_chans, 64, 3, stride=2), _conv_bn(64, 64, 3, groups=64))
        blocks: list[nn.Module] = []
        in_chs = 64
        for t, c, n, s in MOBILEFACENET_SETTING:
            for i in range(n):
                blocks.append(_Bottleneck(in_chs, c, s if i == 0 else 1, t))
                in_chs = c
        blocks.append(_conv_bn(in_chs, width, 1))
        blocks.append(_conv_bn(width, width, kernel, groups=width, act=False))  # linear GDConv
        self.stages = nn.Sequential(*blocks)
        self.num_features = width
        self.feature_info = [{"num_chs": width, "reduction": 16, "module": "stages"}]
        self._init_head(num_classes, global_pool, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")


# -- registry -----------------------------------------------------------------------------------------------------


def _cfg(
    first_conv: str = "stem.0",
    input_size: tuple[int, int, int] = (3, 112, 112),
    pool_size: tuple[int, int] = (7, 7),
) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": input_size,
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": _FACE_MEAN,
        "std": _FACE_STD,
        "first_conv": first_conv,
        "classifier": "head.fc",
    }


default_cfgs = generate_default_cfgs(
    {
        "iresnet18": _cfg(),
        "iresnet34": _cfg(),
        "iresnet50": _cfg(),
        "iresnet100": _cfg(),
        "sphereface20": _cfg(first_conv="stages.0.0", input_size=(3, 112, 96), pool_size=(7, 6)),
        "mobilefacenet": _cfg(first_conv="stem.0.0", pool_size=(1, 1)),
    }
)


def _create(variant: str, cls: type[nn.Module], pretrained: bool, **kwargs: Any) -> Any:
    if pretrained:
        raise ValueError(
            f"timm model {variant!r} (facetrain.models.face_backbones) has no pretrained weights; "
            "use pretrained=false, or load your own with checkpoint_path=<state dict>"
        )
    return build_model_with_cfg(cls, variant, pretrained=False, **kwargs)


@register_model
def iresnet18(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18: stages [2, 2, 2, 2] (InsightFace ``iresnet18``)."""
    return _create("iresnet18", IResNet, pretrained, **{"layers": (2, 2, 2, 2), **kwargs})


@register_model
def iresnet34(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34: stages [3, 4, 6, 3] (InsightFace ``iresnet34``)."""
    return _create("iresnet34", IResNet, pretrained, **{"layers": (3, 4, 6, 3), **kwargs})


@register_model
def iresnet50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50: stages [3, 4, 14, 3] (InsightFace ``iresnet50``; ArcFace's "ResNet50" on CASIA)."""
    return _create("iresnet50", IResNet, pretrained, **{"layers": (3, 4, 14, 3), **kwargs})


@register_model
def iresnet100(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100: stages [3, 13, 30, 3] (InsightFace ``iresnet100``)."""
    return _create("iresnet100", IResNet, pretrained, **{"layers": (3, 13, 30, 3), **kwargs})


@register_model
def sphereface20(pretrained: bool = False, **kwargs: Any) -> SphereFace:
    """SphereFace-20 without BatchNorm: residual units 1-2-4-1 (SphereFace / cam-softmax code)."""
    return _create("sphereface20", SphereFace, pretrained, **{"layers": (1, 2, 4, 1), **kwargs})


@register_model
def mobilefacenet(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet (Chen et al., 2018), trunk up to the GDConv."""
    return _create("mobilefacenet", MobileFaceNet, pretrained, **kwargs)


def face_model_names() -> list[str]:
    """The timm names this module registers."""
    return ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "sphereface20", "mobilefacenet"]
