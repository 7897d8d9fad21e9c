"""What ``FaceEmbedder`` accepts as images, and the checks that name a bad one before any model runs.

Images are aligned ``H×W×3`` uint8 arrays (RGB unless the caller says BGR), image files, directories of image files
(searched recursively, sorted) or list files (one image path per line, relative paths relative to the list file,
``#`` comments). Decoding is :func:`facetrain.data.decode.read_rgb`, the same check-then-decode the training loader
uses, so a truncated JPEG is an error naming the file instead of a grey smear.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from facetrain.data.decode import IMAGE_EXTENSIONS, read_rgb

__all__ = [
    "BadInputError",
    "ImageLike",
    "check_image",
    "check_landmarks",
    "check_threshold",
    "expand_images",
    "list_images",
    "load",
]

ImageLike = np.ndarray | str | os.PathLike


class BadInputError(ValueError):
    """An image, landmark set or threshold that cannot be used; the message names it."""


def list_images(source: str | os.PathLike[str]) -> list[str]:
    """The image files of a directory (recursive, sorted) or of a list file (one path per line).

    Raises:
        BadInputError: ``source`` does not exist, or holds no image.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        what = f"directory {path}"
    elif path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        files = [str(path.parent / ln) if not os.path.isabs(ln) else ln for ln in lines if ln and ln[0] != "#"]
        what = f"list file {path}"
    else:
        raise BadInputError(f"{path} is neither an image directory nor a list file")
    if not files:
        raise BadInputError(f"{what} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def expand_images(images: ImageLike | Iterable[ImageLike]) -> list[np.ndarray | str]:
    """One entry per image: arrays as they are, paths as strings (directories and list files expanded)."""
    if isinstance(images, np.ndarray):
        return [images] if images.ndim != 4 else list(images)
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir():
            return [str(path)]  # a missing image file fails in read_rgb, with its name
        return list(list_images(path))
    out: list[np.ndarray | str] = []
    for item in images:
        out.extend([item] if isinstance(item, np.ndarray) else expand_images(item))
    return out


def load(item: np.ndarray | str) -> np.ndarray:
    """The array of an entry of :func:`expand_images` (files decoded to RGB; OSError names a bad file)."""
    return item if isinstance(item, np.ndarray) else read_rgb(item)


def check_image(image: np.ndarray, name: str, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` if it is ``H×W×3`` uint8 (and ``size``, when given); else :class:`BadInputError` naming it."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise BadInputError(f"image {name} must be an H×W×3 colour image, got shape {shape}")
    if image.dtype != np.uint8:
        raise BadInputError(f"image {name} must be uint8 (0-255), got {image.dtype}")
    if size is not None and image.shape[:2] != tuple(size):
        raise BadInputError(
            f"image {name} is {image.shape[0]}x{image.shape[1]} but the model takes aligned {size[0]}x{size[1]} "
            "crops: pass its 5 landmarks (landmarks=..., FaceEmbedder.align, facetrain-embed --landmarks) or align "
            "it first (scripts/align_faces.py)"
        )
    return image


def check_landmarks(landmarks: object, name: str) -> np.ndarray:
    """``landmarks`` as a finite ``5×2`` float array (x, y per point), else :class:`BadInputError`."""
    points = np.asarray(landmarks, dtype=np.float64) if not isinstance(landmarks, Mapping) else None
    if points is None or points.shape != (5, 2):
        shape = None if points is None else points.shape
        raise BadInputError(
            f"landmarks of {name} must be 5 (x, y) points (left eye, right eye, nose, left and right mouth corner) "
            f"with shape (5, 2), got {shape}"
        )
    if not np.isfinite(points).all():
        raise BadInputError(f"landmarks of {name} contain NaN or infinity")
    return points


def check_threshold(threshold: float) -> float:
    """A cosine threshold in [-1, 1], else :class:`BadInputError`."""
    value = float(threshold)
    if not -1.0 <= value <= 1.0:
        raise BadInputError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return value
