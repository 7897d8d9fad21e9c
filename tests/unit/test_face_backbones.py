"""The face trunks registered in timm (facetrain.models.face_backbones): shapes, sizes, SphereFace without BN."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import facetrain.models.face_backbones as face_backbones
from facetrain.models.backbone import FaceBackbone

NAMES = face_backbones.face_model_names()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def trunks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {n: timm.create_model(n, pretrained=False, num_classes=0, global_pool="").eval() for n in NAMES}


def test_registered_in_timm() -> None:
    assert set(NAMES) <= set(timm.list_models())
    for name in NAMES:
        assert timm.is_model(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(112, 112), (112, 96)])
def test_unpooled_feature_map(trunks: dict[str, nn.Module], name: str, size: tuple[int, int]) -> None:
    model = trunks[name]
    if name == "mobilefacenet" and size != (112, 112):
        # The GDConv kernel is the final map size: built for the input size (what FaceBackbone's retry passes).
        model = timm.create_model(name, num_classes=0, global_pool="", img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
        # Finite with batch statistics; in eval mode an untrained IResNet-100 overflows, as InsightFace's (see the
        # IResNet docstring), so that is not asserted.
        trained_mode = model.train()(torch.randn(2, 3, *size))  # BN running stats move; the fixture is ours
    model.eval()
    assert torch.isfinite(trained_mode).all()
    expected_map = (1, 1) if name == "mobilefacenet" else (7, 7 if size[1] == 112 else 6)
    assert out.shape == (2, model.num_features, *expected_map)
    assert model.num_features == 512


def test_timm_classifier_api() -> None:
    model = timm.create_model("iresnet18", num_classes=10).eval()
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 10)
    model.reset_classifier(0)
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 512)  # pooled features, as timm's num_classes=0
    model.reset_classifier(0, global_pool="")
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 512, 7, 7)
    assert model.pretrained_cfg["input_size"] == (3, 112, 112)


def test_no_pretrained_weights_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("iresnet50", pretrained=True)


# Parameter counts measured here (trunk + FaceBackbone neck, 112x112): IResNet 18/34/50/100 = 24.03M / 34.14M /
# 43.59M / 65.16M with the 512-d BN-Dropout-FC-BN output layer, InsightFace's published 24.0M / 34.1M / 43.6M / 65.2M
# (arcface_torch README). MobileFaceNet with the 128-d embedding: 1.00M (Chen et al. 2018: 0.99M).
@pytest.mark.parametrize(
    ("name", "embedding", "low", "high"),
    [
        ("iresnet18", 512, 23.5e6, 24.5e6),
        ("iresnet34", 512, 33.6e6, 34.6e6),
        ("iresnet50", 512, 43.0e6, 44.0e6),
        ("iresnet100", 512, 64.6e6, 65.6e6),
        ("mobilefacenet", 128, 0.95e6, 1.05e6),
    ],
)
def test_parameter_counts_match_the_published_models(
    trunks: dict[str, nn.Module], name: str, embedding: int, low: float, high: float
) -> None:
    trunk = trunks[name]
    channels, h, w = trunk(torch.zeros(1, 3, 112, 112)).shape[1:]
    neck = 2 * channels + (channels * h * w + 1) * embedding + 2 * embedding  # BN2d, FC, BN1d of FaceBackbone
    assert low <= _params(trunk) + neck <= high


def test_iresnet50_face_backbone_is_insightfaces_size() -> None:
    assert 43.0e6 <= _params(FaceBackbone("iresnet50", embedding_size=512)) <= 44.0e6  # InsightFace: 43.6M


def test_sphereface20_has_no_batchnorm_and_twenty_layers(trunks: dict[str, nn.Module]) -> None:
    trunk = trunks["sphereface20"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in trunk.modules())
    convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # 4 stride-2 convs + 2 x (1 + 2 + 4 + 1) residual convs
    assert sum(isinstance(m, nn.PReLU) for m in trunk.modules()) == 20
    # The official 112x96 network: 512x7x6 into the 256-d FC of the cam-softmax code.
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 112, 96)).shape == (1, 512, 7, 6)


def test_iresnet_block_counts(trunks: dict[str, nn.Module]) -> None:
    blocks = {"iresnet18": 8, "iresnet34": 16, "iresnet50": 24, "iresnet100": 49}
    for name, count in blocks.items():
        assert sum(isinstance(m, face_backbones.IBasicBlock) for m in trunks[name].modules()) == count


def test_face_backbone_with_a_face_trunk_trains() -> None:
    torch.manual_seed(0)
    model = FaceBackbone(model_name="iresnet18", embedding_size=64, dropout=0.1)
    images = torch.randn(4, 3, 112, 112)
    out = model(images)
    assert out.shape == (4, 64)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    assert model(images[:1]).shape == (1, 64)
