"""Lossless conversions between image folders, RecordIO packs and verification ``.bin`` packs.

The logic behind ``scripts/folders_to_rec.py``, ``scripts/rec_to_folders.py`` and ``scripts/pairs_to_bin.py``.
Image bytes are always copied unchanged (never decoded and re-encoded), so a round trip reproduces every file
byte for byte.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from facetrain.data.binset import write_bin, write_video_bin
from facetrain.data.decode import decode_rgb, encoded_size
from facetrain.data.image_files import scan_identity_folders
from facetrain.data.protocols import check_images_exist, fold_ids, list_frames, read_lfw_pairs, read_ytf_splits
from facetrain.data.recordio import PackInfo, RecordIOFaces, write_recordio

__all__ = [
    "folders_to_recordio",
    "image_extension",
    "lfw_pairs_to_bin",
    "progress",
    "recordio_to_folders",
    "ytf_splits_to_bin",
]

T = TypeVar("T")

# Leading bytes of the formats cv2 decodes that face packs use; anything else is written as .jpg.
_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"))


def progress(iterable: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Iterate with a tqdm bar if tqdm is installed, else a counter line on stderr every 1 % (or not at all)."""
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, unit="img")
        return
    step = max(1, total // 100)
    for i, item in enumerate(iterable, start=1):
        yield item
        if i % step == 0 or i == total:
            print(f"\r{desc}: {i}/{total}", end="\n" if i == total else "", file=sys.stderr, flush=True)


def _image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file: from its JPEG/PNG header, else by decoding it (the one decoder)."""
    data = Path(path).read_bytes()
    size = encoded_size(data)
    if size is not None:
        return size
    try:
        return decode_rgb(data, path).shape[:2]
    except OSError as error:
        raise ValueError(f"{error}: cannot read the image size for 'property'; pass image_size") from error


def image_extension(data: bytes) -> str:
    """File extension for encoded image bytes from their signature (``.jpg`` when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _SIGNATURES if data.startswith(magic)), ".jpg")


def folders_to_recordio(
    root: str | os.PathLike,
    prefix: str | os.PathLike,
    *,
    header_record: bool = True,
    image_size: tuple[int, int] | None = None,
    show_progress: bool = True,
) -> PackInfo:
    """Pack an identity-folder tree ``root/<identity>/<image>`` into a RecordIO pack.

    Labels follow :func:`facetrain.data.image_files.scan_identity_folders` (sorted identity folder names, images sorted
    within each), so the pack order equals the order :class:`~facetrain.data.image_files.LabelledImages` would use.

    Args:
        root: Tree root.
        prefix: Output prefix (``<prefix>.rec``/``.idx``, ``property`` next to them) or an existing directory.
        header_record: Write InsightFace's header and identity records (see :func:`write_recordio`).
        image_size: ``(height, width)`` for ``property``; by default that of the first image (only it is decoded).
        show_progress: Show a progress bar / counter.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` holds no images, or the first image cannot be decoded when ``image_size`` is None.
    """
    _, paths, labels = scan_identity_folders(root)
    if image_size is None:
        image_size = _image_size(str(paths[0]))
    items = ((Path(p).read_bytes(), int(label)) for p, label in zip(paths, labels))
    return write_recordio(
        prefix,
        progress(items, len(paths), "packing", show_progress),
        header_record=header_record,
        image_size=image_size,
    )


def recordio_to_folders(prefix: str | os.PathLike, out: str | os.PathLike, *, show_progress: bool = True) -> int:
    """Unpack a RecordIO pack into ``out/<label:07d>/<n:03d><ext>`` (``n`` from 1 per label, CASIA-style).

    The extension comes from the image bytes' signature; bytes are written unchanged.

    Returns:
        The number of images written.

    Raises:
        FileExistsError: ``out`` exists and is not an empty directory (so two packs never mix).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output {str(out)!r} exists and is not an empty directory")
    pack = RecordIOFaces(prefix, decode=False)
    counts: dict[int, int] = {}
    for i in progress(range(len(pack)), len(pack), "unpacking", show_progress):
        data = pack.read_bytes(i)
        label = int(pack.labels[i])
        counts[label] = counts.get(label, 0) + 1
        folder = out / f"{label:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{counts[label]:03d}{image_extension(data)}").write_bytes(data)
    pack.close()
    return len(pack)


def lfw_pairs_to_bin(
    root: str | os.PathLike,
    pairs_file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ext: str = "jpg",
    show_progress: bool = True,
) -> int:
    """Write an LFW-style ``pairs.txt`` and its images as an InsightFace verification ``.bin``.

    Images are stored in pair order (``2i``, ``2i+1`` = pair ``i``, pairs in file order so the 10 folds stay
    contiguous), as the unchanged file bytes, like insightface's ``lfw2pack.py``. Images used by several pairs are
    stored once per use, as in that format.

    Returns:
        The number of pairs written.

    Raises:
        FileNotFoundError: ``pairs_file`` or an image is missing (checked before any image is read).
        ValueError: ``pairs_file`` is malformed.
    """
    pairs = read_lfw_pairs(pairs_file, ext=ext)
    check_images_exist(pairs, root)
    root = Path(root)
    names = [name for pair in zip(pairs.left, pairs.right) for name in pair]
    cache: dict[str, bytes] = {}  # LFW reuses images across pairs; read each file once
    images = []
    for name in progress(names, len(names), "reading", show_progress):
        if name not in cache:
            cache[name] = (root / name).read_bytes()
        images.append(cache[name])
    write_bin(out, images, pairs.issame)
    return len(pairs)


def ytf_splits_to_bin(
    root: str | os.PathLike,
    splits_file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n_splits: int | None = 10,
    frames_per_video: int | None = None,
    show_progress: bool = True,
) -> int:
    """Write a YouTube Faces ``splits.txt`` and its frame folders as a video ``.bin`` pack (``ytf.bin``).

    Each pair stores its two videos as lists of the unchanged frame-file bytes in frame order
    (:func:`facetrain.data.binset.write_video_bin`); a video in several pairs is stored once. The pack keeps pair
    order, and a reader recovers the splits as consecutive blocks (:func:`~facetrain.data.protocols.fold_ids`),
    so a splits file whose splits are not such blocks is refused rather than silently re-folded.

    Args:
        root: ``aligned_images_DB`` (holding ``Name/<video>/<frames>``).
        splits_file: The ``splits.txt``.
        out: Output ``.bin`` (written atomically).
        n_splits: Splits the file must have (10 for YTF); None accepts any number.
        frames_per_video: Store this many evenly spaced frames per video (the evaluation's sampling); None stores
            every frame, which is lossless and, for the real YTF, several GB.
        show_progress: Progress bar on stderr.

    Returns:
        The number of pairs written.

    Raises:
        FileNotFoundError: The splits file, a video folder or its frames are missing (checked before any frame is read).
        ValueError: The splits file is malformed, or its splits are not the consecutive blocks a reader recovers.
    """
    pairs = read_ytf_splits(splits_file, n_splits=n_splits)
    blocks = fold_ids(len(pairs), pairs.n_folds)
    if not np.array_equal(pairs.folds, blocks):
        raise ValueError(
            f"{splits_file}: split sizes {np.bincount(pairs.folds).tolist()} are not the consecutive blocks "
            f"{np.bincount(blocks).tolist()} a .bin reader recovers from pair order, so the pack would change the folds"
        )
    if frames_per_video is not None and frames_per_video < 1:
        raise ValueError(f"frames_per_video must be >= 1 or None, got {frames_per_video}")
    root = Path(root)
    names = sorted(set(pairs.left) | set(pairs.right))
    frames = {name: list_frames(root / name, frames_per_video) for name in names}  # every folder checked first
    videos: dict[str, list[bytes]] = {}
    for name in progress(names, len(names), "reading videos", show_progress):
        videos[name] = [Path(f).read_bytes() for f in frames[name]]
    entries = [videos[name] for pair in zip(pairs.left, pairs.right) for name in pair]  # shared list objects
    write_video_bin(out, entries, pairs.issame)
    return len(pairs)
