"""The training and evaluation transforms: HWC→CHW, Uint8CHW, the device augmentation, CenterCropResize."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from facetrain.data.transforms import (
    CenterCropResize,
    GpuAugment,
    Uint8CHW,
    find_normalize,
    gpu_augment,
    hwc_to_chw,
    to_tensor,
)


def test_hwc_to_chw_matches_transpose() -> None:
    rng = np.random.default_rng(0)
    for shape in [(5, 7, 3), (4, 6, 1), (3, 2, 4), (6, 5)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        out = hwc_to_chw(image)
        assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, expected)
    view = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)[:, ::-1]  # non-contiguous input
    assert np.array_equal(hwc_to_chw(view), view.transpose(2, 0, 1))


def test_uint8_chw_transform() -> None:
    image = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = to_tensor(Uint8CHW(), image)
    assert out.dtype == torch.uint8 and out.shape == (3, 6, 5)
    assert torch.equal(out, torch.from_numpy(image).permute(2, 0, 1))
    cropped = Uint8CHW(A.Compose([A.CenterCrop(4, 4)]))(image=image)["image"]
    assert cropped.shape == (3, 4, 4)
    with pytest.raises(TypeError, match="data.uint8_transform"):
        Uint8CHW(A.Compose([A.Normalize()]))(image=image)


def test_gpu_augment_equals_albumentations_normalize() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cpu = A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])
    expected = torch.stack([cpu(image=i)["image"] for i in images])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    out = gpu_augment(batch, mean, std, flip_p=0.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    flipped = gpu_augment(batch, mean, std, flip_p=1.0)
    torch.testing.assert_close(flipped, expected.flip(3), atol=1e-5, rtol=1e-5)


def test_gpu_augment_flip_rate_and_generator() -> None:
    batch = torch.arange(4000 * 2, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(4000, 1, 1, 2)
    out = gpu_augment(batch, [0.0], [1.0 / 255], flip_p=0.3, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] != batch[:, 0, 0, 0].float()).float().mean().item()
    assert 0.27 < flipped < 0.33
    again = gpu_augment(batch, [0.0], [1.0 / 255], flip_p=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(TypeError, match="uint8"):
        gpu_augment(batch.float(), [0.0], [1.0], 0.5)
    with pytest.raises(ValueError, match="mean/std"):
        gpu_augment(batch, [0.0, 0.0], [1.0, 1.0], 0.5)


def test_gpu_augment_config_validation() -> None:
    aug = GpuAugment(flip_p=1.0)
    batch = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    batch[..., 0] = 255
    assert aug(batch, train=False)[0, 0, 0, 0].item() == pytest.approx(1.0)  # no flip outside training
    assert aug(batch, train=True)[0, 0, 0, 0].item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="data.gpu_augment.flip_p"):
        GpuAugment(flip_p=1.5)
    with pytest.raises(ValueError, match="data.gpu_augment.std"):
        GpuAugment(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="same number"):
        GpuAugment(mean=(0.5,), std=(0.5, 0.5))


def test_find_normalize() -> None:
    pipeline = A.Compose([A.HorizontalFlip(), A.Normalize(mean=[0.1, 0.2, 0.3], std=[0.5] * 3), ToTensorV2()])
    mean, std, max_value = find_normalize(pipeline)
    assert mean == pytest.approx((0.1, 0.2, 0.3)) and std == pytest.approx((0.5,) * 3) and max_value == 255
    assert find_normalize(A.Compose([ToTensorV2()])) is None
    assert find_normalize(None) is None


def test_center_crop_resize() -> None:
    image = np.zeros((250, 250, 3), np.uint8)
    image[100:150, 100:150] = 255  # a centred white square, 50 px of 250
    out = CenterCropResize(crop_size=150, size=(112, 112))(image=image)["image"]
    assert out.shape == (112, 112, 3)
    # 50/150 of the crop -> ~37 px of 112, centred
    row = out[56, :, 0] > 127
    assert abs(int(row.sum()) - 37) <= 2 and abs(int(np.flatnonzero(row).mean()) - 56) <= 1
    rect = CenterCropResize(crop_size=(120, 100), size=(112, 96))(image=image)["image"]
    assert rect.shape == (112, 96, 3)
    pipeline = A.Compose([CenterCropResize(150), A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])
    assert pipeline(image=image)["image"].shape == (3, 112, 112)
    with pytest.raises(ValueError, match="crop_size"):
        CenterCropResize(crop_size=0)
    with pytest.raises(ValueError, match="size"):
        CenterCropResize(crop_size=100, size=(112,))
