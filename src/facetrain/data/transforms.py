"""Image transforms of the training and evaluation paths: array → tensor, the uint8 path and its device augmentation.

The float path runs an albumentations pipeline per sample in the workers (:func:`to_tensor`). The uint8 path
(``data.uint8_batches``) keeps images uint8 on the CPU (:class:`Uint8CHW`) and flips + normalises the whole batch on
the device (:class:`GpuAugment`), with the same numbers as albumentations' ``Normalize``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import albumentations as A
import cv2
import numpy as np
import torch

from facetrain.utils.rules import POSITIVE, PROBABILITY, Constraint, Each, Interval, check_args

Transform = Callable[..., dict[str, Any]]  # an albumentations Compose: transform(image=...) -> {"image": ...}


def to_tensor(transform: Transform | None, image: np.ndarray) -> torch.Tensor:
    """Apply an albumentations transform (if any) and return a ``3×H×W`` tensor (float unless the transform says).

    A transform that already returns a tensor (ToTensorV2, :class:`Uint8CHW`) keeps its dtype; a plain array is
    converted to float.
    """
    if transform is not None:
        image = transform(image=image)["image"]
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def hwc_to_chw(image: np.ndarray) -> np.ndarray:
    """``H×W×C`` → contiguous ``C×H×W`` copy.

    ``cv2.split`` into the planes of a preallocated array is ~6x faster than NumPy's strided transpose copy on
    112×112×3 uint8 (5 vs 31 µs, measured here), which matters next to a ~100 µs decode.
    """
    if image.ndim == 2:
        return image[None].copy()
    out = np.empty((image.shape[2], *image.shape[:2]), dtype=image.dtype)
    if image.shape[2] == 1:
        out[0] = image[:, :, 0]
    else:
        cv2.split(np.ascontiguousarray(image), list(out))  # writes into the contiguous planes out[0], out[1], ...
    return out


class Uint8CHW:
    """Transform for ``data.uint8_batches``: ``H×W×3`` uint8 → ``3×H×W`` uint8 tensor, no normalisation.

    Called like an albumentations pipeline (``t(image=...)["image"]``) so every dataset that applies its transform
    through :func:`to_tensor` (identity folders, RecordIO) can emit uint8 batches. It skips albumentations' Compose
    machinery on purpose: that overhead is a sizeable share of a 100 µs decode.

    Args:
        pre: Optional CPU pipeline applied first (e.g. a crop); it must return a uint8 ``H×W×3`` array, so no
            Normalize and no ToTensorV2 (``data.uint8_transform``).
    """

    def __init__(self, pre: Transform | None = None) -> None:
        self.pre = pre

    def __getattr__(self, name: str) -> Any:
        # ``set_random_seed`` exists only when the CPU pipeline is random, so EpochSeeded seeds it per sample (exact
        # resume) and otherwise keeps the batched fetch (flip + normalise happen on the device, seeded there).
        if name == "set_random_seed":
            pre = self.__dict__.get("pre")
            if pre is not None and hasattr(pre, "set_random_seed"):
                return pre.set_random_seed
        raise AttributeError(name)

    def __call__(self, image: np.ndarray, **_: Any) -> dict[str, torch.Tensor]:
        if self.pre is not None:
            image = self.pre(image=image)["image"]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
                raise TypeError(
                    "data.uint8_transform must return an H×W×C uint8 array (no Normalize, no ToTensorV2), got "
                    f"{type(image).__name__} {getattr(image, 'dtype', '')}"
                )
        return {"image": torch.from_numpy(hwc_to_chw(image))}


class CenterCropResize(A.ImageOnlyTransform):
    """Centre crop then resize: the evaluation step for unaligned images such as official 250×250 LFW.

    Official LFW images are 250×250 with the Viola-Jones detection (enlarged 2.2×) centred (LFW README,
    docs/protocols.md §2.1 [S5]), so the detected face box is about 250/2.2 ≈ 114 px square in the middle. The crop size
    is a choice, not a published standard: state it with any number obtained this way; numbers on aligned crops
    (``scripts/align_faces.py``) are the comparable ones.

    Args:
        crop_size: Centre crop as ``int`` (square) or ``(height, width)``; clipped to the image.
        size: Output ``(height, width)``.
        interpolation: OpenCV flag; INTER_AREA (default) is the right filter when shrinking.
        p: Probability (keep 1.0 for evaluation).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        size: Sequence[int] = (112, 112),
        interpolation: int = cv2.INTER_AREA,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != 2 or not all(isinstance(v, int) and v > 0 for v in crop):
            raise ValueError(f"CenterCropResize.crop_size must be a positive int or (height, width), got {crop_size!r}")
        out = tuple(size)
        if len(out) != 2 or not all(isinstance(v, int) and v > 0 for v in out):
            raise ValueError(f"CenterCropResize.size must be (height, width) of positive ints, got {size!r}")
        self.crop_size = crop
        self.size = out
        self.interpolation = interpolation

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        h, w = img.shape[:2]
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = img[top : top + ch, left : left + cw]
        if crop.shape[:2] == self.size:
            return np.ascontiguousarray(crop)
        return cv2.resize(crop, (self.size[1], self.size[0]), interpolation=self.interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("crop_size", "size", "interpolation")


def gpu_augment(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
    max_pixel_value: float = 255.0,
) -> torch.Tensor:
    """Random horizontal flip + normalisation of a uint8 ``B×C×H×W`` batch on its own device.

    The normalisation is albumentations' ``Normalize`` exactly, ``(x - mean·max) / (std·max)``, so a run with
    ``data.uint8_batches=true`` sees the same numbers as the CPU pipeline [HorizontalFlip(p), Normalize(mean, std)]
    and as the evaluation transform. Each image is flipped independently with probability ``flip_p``.

    Args:
        images: uint8 batch, ``B×C×H×W``.
        mean: Per-channel mean in [0, 1] units (C values).
        std: Per-channel std in [0, 1] units (C values).
        flip_p: Flip probability (0 for evaluation).
        generator: Optional ``torch.Generator`` on ``images.device`` for reproducible flips.
        max_pixel_value: 255 for uint8.

    Returns:
        float32 ``B×C×H×W``.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"gpu_augment expects a uint8 B×C×H×W batch, got {images.dtype} of shape {tuple(images.shape)}")
    channels = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    if mean_t.shape[1] != channels or std_t.shape[1] != channels:
        raise ValueError(f"gpu_augment: mean/std need {channels} values, got {mean_t.numel()} and {std_t.numel()}")
    x = (images.float() - mean_t * max_pixel_value) / (std_t * max_pixel_value)
    if flip_p > 0:
        flip = torch.rand(images.shape[0], generator=generator, device=images.device) < flip_p
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class GpuAugment:
    """Configured :func:`gpu_augment` (``data.gpu_augment``); the DataModule applies it after the device transfer.

    Args:
        mean: Per-channel mean in [0, 1] units; must equal the evaluation transform's Normalize mean.
        std: Per-channel std in [0, 1] units (all > 0).
        flip_p: Horizontal flip probability during training, in [0, 1].
        max_pixel_value: 255 for uint8 images.
    """

    config_constraints: ClassVar[dict[str, Constraint]] = {
        "mean": Each(Interval(), min_len=1),
        "std": Each(POSITIVE, min_len=1),
        "flip_p": PROBABILITY,
        "max_pixel_value": POSITIVE,
    }

    def __init__(
        self,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        flip_p: float = 0.5,
        max_pixel_value: float = 255.0,
    ) -> None:
        check_args(self, locals(), prefix="data.gpu_augment")
        if len(mean) != len(std):
            raise ValueError(f"data.gpu_augment.mean and .std need the same number of values, got {mean} and {std}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.flip_p = float(flip_p)
        self.max_pixel_value = float(max_pixel_value)

    def __call__(
        self, images: torch.Tensor, train: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return gpu_augment(images, self.mean, self.std, self.flip_p if train else 0.0, generator, self.max_pixel_value)

    def __repr__(self) -> str:
        return f"GpuAugment(mean={self.mean}, std={self.std}, flip_p={self.flip_p})"


def find_normalize(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...], float] | None:
    """``(mean, std, max_pixel_value)`` of the first albumentations ``Normalize`` in a pipeline, or None."""
    for t in getattr(transform, "transforms", []) or []:
        if isinstance(t, A.Normalize):
            mean, std = np.broadcast_to(t.mean, (3,)), np.broadcast_to(t.std, (3,))
            return tuple(map(float, mean)), tuple(map(float, std)), float(t.max_pixel_value)
        inner = find_normalize(t)
        if inner is not None:
            return inner
    return None
