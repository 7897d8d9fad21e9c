"""Image decoding and the datasets that feed the training and evaluation loaders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Transform = Callable[..., dict[str, Any]]  # an albumentations Compose: transform(image=...) -> {"image": ...}


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an ``H×W×3`` uint8 RGB array.

    Raises:
        OSError: The file is missing, unreadable or not a decodable image; the message names it.
    """
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {os.fspath(path)!r} (missing, unreadable or corrupt)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def scan_identity_folders(root: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """List a CASIA-WebFace style tree ``root/<identity>/<image>``.

    Identities are the sorted sub-folder names; labels are their positions in that order. Paths and labels are
    NumPy arrays rather than Python lists so DataLoader workers do not copy them on access.

    Returns:
        ``(classes, paths, labels)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No identity folder with images was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data root {str(root)!r} does not exist or is not a directory")
    classes, paths, labels = [], [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        files = sorted(f.name for f in os.scandir(entry.path) if f.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            continue
        label = len(classes)
        classes.append(entry.name)
        paths.extend(os.path.join(entry.path, f) for f in files)
        labels.extend([label] * len(files))
    if not classes:
        raise ValueError(f"training data root {str(root)!r} holds no <identity>/<image> folders with images")
    return classes, np.asarray(paths), np.asarray(labels, dtype=np.int64)


def to_tensor(transform: Transform | None, image: np.ndarray) -> torch.Tensor:
    """Apply an albumentations transform (if any) and return a ``3×H×W`` float tensor."""
    if transform is not None:
        image = transform(image=image)["image"]
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


class LabelledImages(Dataset):
    """``(image, label)`` pairs from parallel arrays of paths and integer labels."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, transform: Transform | None = None) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.transform, read_rgb(self.paths[index])), int(self.labels[index])


class ImageList(Dataset):
    """Images only, in the order given: what the evaluation callbacks embed."""

    def __init__(self, paths: Sequence[str] | np.ndarray, transform: Transform | None = None) -> None:
        self.paths = np.asarray(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.transform, read_rgb(self.paths[index]))
