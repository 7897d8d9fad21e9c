"""Image decoding, image-file checks, the datasets that feed the loaders, and the device-side augmentation.

Decoding uses OpenCV (``cv2.imdecode``, libjpeg-turbo in the opencv-python wheels): on 112×112 CASIA-style JPEGs it
is the fastest decoder this project has (``scripts/bench_loader.py`` compares it with PIL). Every read checks the
bytes first, because OpenCV returns a half-grey image instead of an error for a truncated JPEG (libjpeg only prints
"Premature end of JPEG file"), and a silently damaged training image is worse than a loud failure. Damage in the
middle of the data (start and end markers intact) shows only as such a libjpeg warning: :func:`decode_checked`, the
full check (``data.verify_images=decode`` and alignment), decodes and catches those warnings too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from facetrain.data.index import PathTable
from facetrain.data.shared_batches import DEFAULT_SLOTS, BufferPool, TrackedBatch, worker_pool

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ON_BAD_IMAGE = ("error", "skip")
VERIFY_IMAGES = ("header", "decode", "none")

Transform = Callable[..., dict[str, Any]]  # an albumentations Compose: transform(image=...) -> {"image": ...}

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type + its fixed CRC: the last 8 bytes of every complete PNG
_TAIL_BYTES = 1024  # room for the zero/whitespace padding some encoders append after the end marker
_PADDING = b"\x00\r\n\t "
# libjpeg's warnings about damaged entropy-coded data (jerror.h JWRN_*); "bad ICC marker" is metadata, not pixels.
_DECODER_DAMAGE = re.compile(
    r"Corrupt JPEG data(?!: bad ICC marker)|Premature end of JPEG file|Invalid SOS parameters|"
    r"Inconsistent progression sequence|Huffman"
)
_STDERR_LOCK = threading.Lock()  # one reader of file descriptor 2 at a time, see _imdecode_reporting
_stderr_sink: Any = None  # the temporary file fd 2 is pointed at while decoding (created on first use)


def _reset_stderr_capture() -> None:
    # A forked child (a DataLoader worker) gets its own lock, in case the fork happened while another thread held
    # it, and its own sink file, whose offset would otherwise be shared with the parent's.
    global _STDERR_LOCK, _stderr_sink
    _STDERR_LOCK, _stderr_sink = threading.Lock(), None


os.register_at_fork(after_in_child=_reset_stderr_capture)
# OpenCV >= 4.10 decodes JPEG straight to RGB (libjpeg's output colour space): no extra cvtColor pass.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


# ---------------------------------------------------------------------------------------------------------------
# Decoding and checks
# ---------------------------------------------------------------------------------------------------------------


def bytes_problem(head: bytes, tail: bytes, size: int) -> str | None:
    """Why an encoded image is unusable, judged from its first and last bytes only; None if it looks complete.

    JPEG must start with SOI (FFD8FF) and end with EOI (FFD9), optionally followed by zero or whitespace padding;
    a missing EOI is how a truncated download shows. PNG must start with its signature and end with the IEND chunk.
    BMP and WebP are checked by their signature only.

    Args:
        head: At least the first 12 bytes of the file (fewer only if the file is shorter).
        tail: The last bytes of the file (up to 1 KiB).
        size: The file size in bytes.
    """
    if size == 0:
        return "empty file (0 bytes)"
    if head.startswith(_JPEG_SOI):
        if not tail.rstrip(_PADDING).endswith(_JPEG_EOI):
            return "truncated JPEG (no end-of-image marker FFD9 at the end)"
        return None
    if head.startswith(_PNG_SIGNATURE):
        return None if tail.endswith(_PNG_IEND) else "truncated PNG (no IEND chunk at the end)"
    if head.startswith(b"BM") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return f"not a JPEG/PNG/BMP/WebP image (first bytes {head[:8].hex()})"


# JPEG start-of-frame markers (ITU T.81 table B.1: SOF0-3, 5-7, 9-11, 13-15); they carry the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of an encoded JPEG or PNG read from its header, without decoding; None otherwise.

    Cheap enough to run over a whole evaluation pack when it is loaded. None for other formats and for headers that
    do not parse (the decoder then reports the problem). The size is the stored one: an EXIF orientation that
    swaps the sides is not applied here.
    """
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return (height, width) if height and width else None
    if not data.startswith(_JPEG_SOI):
        return None
    pos = 2
    while pos + 9 <= len(data):  # walk the marker segments up to the frame header
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers: no length field
            pos += 2
        elif marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        elif marker in _JPEG_SOF:
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return (height, width) if height and width else None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _imdecode_reporting(buffer: np.ndarray, flags: int) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode`` and what its codec wrote on stderr meanwhile (libjpeg's warnings).

    libjpeg reports recoverable damage ("Corrupt JPEG data: premature end of data segment", "... extraneous bytes
    before marker") only by printing a warning, and OpenCV then returns an image that is grey or shifted from the
    damage on. Neither OpenCV nor Pillow hands those warnings to Python, so this points file descriptor 2 at a
    temporary file for the duration of the call and reads it back. The lock keeps the threads of this process from
    reading each other's messages; text that is not a decoder warning is passed on to the real stderr.
    """
    global _stderr_sink
    with _STDERR_LOCK:
        if _stderr_sink is None:
            _stderr_sink = tempfile.TemporaryFile()  # noqa: SIM115 (kept open and reused for the process's life)
        sink = _stderr_sink.fileno()
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink, 2)
            try:
                image = cv2.imdecode(buffer, flags)
            except cv2.error:
                image = None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        written = os.lseek(sink, 0, os.SEEK_CUR)  # fd 2 shared the sink's offset: this is what was written
        text = ""
        if written:
            text = os.pread(sink, written, 0).decode("utf-8", errors="replace")
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
    damage = [line.strip() for line in text.splitlines() if _DECODER_DAMAGE.search(line)]
    other = "".join(line for line in text.splitlines(keepends=True) if not _DECODER_DAMAGE.search(line))
    if other:
        sys.stderr.write(other)
    return image, "; ".join(damage)


def decode_checked(data: bytes | np.ndarray, flags: int = cv2.IMREAD_COLOR) -> tuple[np.ndarray | None, str | None]:
    """Decode an encoded image and say why it is not a clean image: the one full check of an image's data.

    It runs :func:`bytes_problem` (empty, truncated, unknown format), then decodes the whole image and reports
    decoder errors and warnings, so damage in the middle of a JPEG whose start and end markers are intact is found
    (libjpeg then only warns, e.g. "Corrupt JPEG data: premature end of data segment", and OpenCV returns an image
    whose lower part is flat grey). Used by ``data.verify_images=decode`` (:func:`image_problem`) and by
    alignment (:func:`facetrain.data.align.read_bgr`). Damage that leaves a valid data stream (a run of bytes that
    happens to decode) gives the decoder nothing to report and cannot be found this way.

    Args:
        data: The encoded file.
        flags: ``cv2.imdecode`` flags (default BGR colour, EXIF orientation applied).

    Returns:
        ``(image, None)`` for a clean image; ``(image or None, reason)`` otherwise (the image, if any, is damaged).
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    problem = bytes_problem(buffer[:12].tobytes(), buffer[-_TAIL_BYTES:].tobytes(), buffer.size)
    if problem is not None:
        return None, problem
    image, warnings = _imdecode_reporting(buffer, flags)
    if image is None:
        return None, "undecodable (corrupt or unsupported format)" + (f": {warnings}" if warnings else "")
    if warnings:
        return image, f"damaged image data (the decoder reports: {warnings})"
    return image, None


def decode_rgb(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """Decode encoded image bytes to an ``H×W×3`` uint8 RGB array.

    Raises:
        OSError: Empty, truncated or undecodable data; the message names ``name`` and the reason.
    """
    if isinstance(data, bytes | bytearray):
        buffer = np.frombuffer(data, dtype=np.uint8)
        problem = bytes_problem(bytes(data[:12]), bytes(data[-_TAIL_BYTES:]), len(data))
    else:
        buffer = data
        problem = bytes_problem(buffer[:12].tobytes(), buffer[-_TAIL_BYTES:].tobytes(), buffer.size)
    image = None if problem else cv2.imdecode(buffer, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    if image is None:
        raise OSError(f"cannot read image {name!r}: {problem or 'undecodable (corrupt or unsupported format)'}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if _IMREAD_RGB is None else image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read and decode an image file to an ``H×W×3`` uint8 RGB array.

    One ``read`` plus ``cv2.imdecode`` costs the same as ``cv2.imread`` (measured by ``scripts/bench_loader.py``)
    and lets :func:`bytes_problem` see the bytes, so a truncated JPEG fails here instead of training as a grey smear.

    Raises:
        OSError: The file is missing, unreadable, empty, truncated or not a decodable image; the message names it.
    """
    name = os.fspath(path)
    try:
        # os.open/os.read skip the buffered-file layer: ~5 µs less per image than open().read().
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, size + 1)
            if len(data) != size:  # a short read (network file systems) or a file that changed: read to the end
                parts = [data]
                while chunk := os.read(fd, 1 << 20):
                    parts.append(chunk)
                data = b"".join(parts)
        finally:
            os.close(fd)
    except OSError as error:
        raise OSError(f"cannot read image {name!r}: {error.strerror or error}") from error
    return decode_rgb(data, name)


def image_problem(path: str | os.PathLike, check: str = "header") -> str | None:
    """Why an image file is unusable, or None.

    Args:
        path: Image file.
        check: ``"header"`` reads only the first 12 and last 1024 bytes (:func:`bytes_problem`); about 7 µs per
            cached file, so 500k CASIA images take seconds. ``"decode"`` also decodes the whole image and listens
            to the decoder (:func:`decode_checked`; about 100 µs per 112×112 JPEG), which catches corruption in the
            middle of the data too.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as error:
        return f"cannot open: {error.strerror or error}"
    try:
        size = os.fstat(fd).st_size
        if check == "decode":
            data = os.pread(fd, size, 0) if size else b""
        else:
            head = os.pread(fd, 12, 0)
            tail = os.pread(fd, min(size, _TAIL_BYTES), max(0, size - _TAIL_BYTES))
    except OSError as error:
        return f"cannot read: {error.strerror or error}"
    finally:
        os.close(fd)
    if check == "decode":
        return decode_checked(data)[1]
    return bytes_problem(head, tail, size)


def find_bad_images(
    paths: Sequence[str] | np.ndarray, check: str = "header", threads: int = 8
) -> list[tuple[int, str]]:
    """Check many image files; returns ``(index, reason)`` of every bad one, in index order.

    Threads overlap the file-system latency (os.pread and cv2.imdecode release the GIL), which matters on network
    storage; results do not depend on the thread count.
    """
    if check not in VERIFY_IMAGES:
        raise ValueError(f"data.verify_images must be one of {VERIFY_IMAGES}, got {check!r}")
    if check == "none" or len(paths) == 0:
        return []
    chunks = [range(start, min(start + 2048, len(paths))) for start in range(0, len(paths), 2048)]

    def run(chunk: range) -> list[tuple[int, str]]:
        found = []
        for i in chunk:
            problem = image_problem(str(paths[i]), check)
            if problem is not None:
                found.append((i, problem))
        return found

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chunks)))) as pool:
        return [item for part in pool.map(run, chunks) for item in part]


# ---------------------------------------------------------------------------------------------------------------
# Identity folders
# ---------------------------------------------------------------------------------------------------------------


def scan_identity_folders(root: str | os.PathLike) -> tuple[list[str], PathTable, np.ndarray]:
    """List a CASIA-WebFace style tree ``root/<identity>/<image>``.

    Identities are the sorted sub-folder names; labels are their positions in that order. Paths are a
    :class:`~facetrain.data.index.PathTable` (UTF-8 bytes + offsets) and labels an int64 array rather than Python
    lists, so a multi-million-image index stays small and DataLoader workers do not copy it on access (reference
    counting touches every Python object, which un-shares fork's copy-on-write pages).

    Returns:
        ``(classes, paths, labels)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No identity folder with images was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data root {str(root)!r} does not exist or is not a directory")
    classes: list[str] = []
    counts: list[int] = []

    def relative_paths() -> Iterator[str]:
        # A generator: one folder's file names at a time, streamed into the PathTable's byte buffer.
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            files = sorted(f.name for f in os.scandir(entry.path) if f.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                continue
            classes.append(entry.name)
            counts.append(len(files))
            for name in files:
                yield f"{entry.name}/{name}"

    paths = PathTable.from_relative(os.fspath(root), relative_paths())
    if not classes:
        raise ValueError(f"training data root {str(root)!r} holds no <identity>/<image> folders with images")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return classes, paths, labels


# ---------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------


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

    def __init__(
        self,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        flip_p: float = 0.5,
        max_pixel_value: float = 255.0,
    ) -> None:
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"data.gpu_augment.mean and .std need the same number of values, got {mean} and {std}")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"data.gpu_augment.std must be > 0, got {list(std)}")
        if not 0.0 <= float(flip_p) <= 1.0:
            raise ValueError(f"data.gpu_augment.flip_p must be in [0, 1], got {flip_p}")
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


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------


def _empty_batch(
    count: int, height: int, width: int, slots: int = DEFAULT_SLOTS
) -> tuple[torch.Tensor, torch.Tensor, BufferPool | None, int | None]:
    """Uninitialised ``count×3×height×width`` uint8 images and ``count`` int64 labels, both views of one storage.

    In a DataLoader worker the storage is shared memory, so sending the batch to the main process copies nothing.
    With ``slots > 0`` it is one of the worker's reused segments (:mod:`facetrain.data.shared_batches`; the pool and
    slot are returned for :func:`collate_batch`), which saves creating, zero-filling, passing and mapping a new
    segment per batch; with 0, a new segment. Outside a worker it is ordinary memory.
    """
    image_bytes = count * 3 * height * width
    offset = -(-image_bytes // 8) * 8  # int64 labels start 8-byte aligned
    nbytes = offset + 8 * count
    pool = worker_pool(slots) if slots > 0 else None  # None outside a worker
    if pool is not None:
        storage, slot = pool.take(nbytes)
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)[:nbytes]
    elif get_worker_info() is not None:
        buffer, slot = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes)), None
    else:
        buffer, slot = torch.empty(nbytes, dtype=torch.uint8), None
    images = buffer[:image_bytes].view(count, 3, height, width)
    return images, buffer[offset:nbytes].view(torch.int64), pool, slot


class CollatedBatch(Sequence):
    """A batch :meth:`LabelledImages.__getitems__` built already collated: ``B×3×H×W`` uint8 images, int64 labels.

    :func:`collate_batch` returns it as ``[images, labels]`` (what ``default_collate`` makes of ``(image, label)``
    samples) without touching the data. It also reads as the sequence of ``(image, int label)`` samples, so a
    DataLoader with the default ``collate_fn`` still gets the same (re-stacked) batch, only slower.
    """

    __slots__ = ("images", "labels", "pool", "slot")

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, pool: BufferPool | None = None, slot: int | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.pool, self.slot = pool, slot  # the worker's reusable segment the batch lives in, if any

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.images[i], int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        return (self[i] for i in range(len(self)))


def collate_batch(batch: Any) -> Any:
    """DataLoader ``collate_fn``: a :class:`CollatedBatch` as ``[images, labels]``, else ``default_collate``.

    A batch in a reused worker segment becomes a :class:`~facetrain.data.shared_batches.TrackedBatch`: the same
    two-element list, which crosses to the main process as the segment's coordinates and arrives on the main
    process's lasting mapping of it; the segment is released for reuse when the batch dies there.
    """
    if isinstance(batch, CollatedBatch):
        if batch.pool is not None and batch.slot is not None:
            return TrackedBatch(batch.images, batch.labels, batch.pool, batch.slot)
        return [batch.images, batch.labels]
    return default_collate(batch)


def decode_batch(
    indices: Sequence[int],
    load: Callable[[int], tuple[np.ndarray, int]],
    describe: Callable[[int], str],
    labels: np.ndarray,
    worker_buffers: int = DEFAULT_SLOTS,
) -> CollatedBatch | list:
    """Decode a batch straight into one uint8 ``B×3×H×W`` array: the batched fetch of the uint8 training path.

    No per-sample tensors and no stacking copy: each decoded ``H×W×3`` image is split into the batch's CHW planes.
    In a DataLoader worker the array is one of the worker's reused shared-memory buffers (``worker_buffers``).

    Args:
        indices: Sample indices of the batch.
        load: ``load(index) -> (RGB image, index it really came from)`` (another one when a bad file was skipped).
        describe: Names sample ``index`` in an error message (its path, or pack, key and offset).
        labels: Label of every sample, indexed by the index ``load`` reports.
        worker_buffers: Reused buffers per worker (0: a new shared-memory segment per batch).

    Returns:
        A :class:`CollatedBatch`, or ``[]`` for no indices.

    Raises:
        ValueError: An image has a different size than the batch's first; the message names both.
    """
    out: np.ndarray | None = None
    sources = np.empty(len(indices), dtype=np.int64)
    first = ""
    for position, index in enumerate(indices):
        image, source = load(int(index))
        if out is None:
            height, width = image.shape[:2]
            images, batch_labels, pool, slot = _empty_batch(len(indices), height, width, worker_buffers)
            out = images.numpy()
            first = describe(source)
        elif image.shape != (height, width, 3):
            raise ValueError(
                f"training image {describe(source)} is {image.shape[1]}x{image.shape[0]} but {first}, the first of "
                f"its batch, is {width}x{height}: uint8 batches need images of one size (resize the data, or resize "
                "in data.uint8_transform)"
            )
        cv2.split(image, list(out[position]))  # HWC -> the batch's CHW planes, no intermediate array
        sources[position] = source
    if out is None:  # no indices
        return []
    batch_labels.numpy()[:] = np.asarray(labels)[sources]
    return CollatedBatch(images, batch_labels, pool, slot)


class LabelledImages(Dataset):
    """``(image, label)`` pairs from parallel arrays of paths and integer labels.

    Args:
        paths: Image paths: a :class:`~facetrain.data.index.PathTable` or NumPy string array (see
            :func:`scan_identity_folders` for why not a list).
        labels: int64 labels, same length.
        transform: albumentations pipeline (or :class:`Uint8CHW`).
        on_bad_image: ``"error"`` raises naming the file. ``"skip"`` returns the next readable sample instead
            (with *its* label, so image and label still match), logs a warning naming the bad file and appends it
            to ``bad_image_log``. The DataModule's check in ``setup`` normally removes bad files before this point;
            this is the fallback for damage the header check cannot see.
        bad_image_log: File that skipped images are appended to (``<run dir>/bad_images.txt``), or None.
        worker_buffers: Shared-memory segments each DataLoader worker reuses for whole uint8 batches
            (:mod:`facetrain.data.shared_batches`); 0 creates a new segment per batch.
    """

    def __init__(
        self,
        paths: PathTable | np.ndarray,
        labels: np.ndarray,
        transform: Transform | None = None,
        on_bad_image: str = "error",
        bad_image_log: str | os.PathLike | None = None,
        worker_buffers: int = DEFAULT_SLOTS,
    ) -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
        if len(paths) != len(labels):
            raise ValueError(f"LabelledImages: {len(paths)} paths but {len(labels)} labels")
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.bad_image_log = None if bad_image_log is None else os.fspath(bad_image_log)
        self._reported: set[str] = set()
        self.worker_buffers = int(worker_buffers)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, source = self._load(index)
        return to_tensor(self.transform, image), int(self.labels[source])

    @property
    def fetches_batches(self) -> bool:
        """Whether :meth:`__getitems__` builds whole uint8 batches (plain :class:`Uint8CHW`, no CPU pipeline)."""
        return type(self.transform) is Uint8CHW and self.transform.pre is None

    def __getitems__(self, indices: Sequence[int]) -> CollatedBatch | list[tuple[torch.Tensor, int]]:
        """A whole batch at once: what the DataLoader's fetcher calls instead of ``__getitem__`` per sample.

        With a plain :class:`Uint8CHW` transform it decodes every image straight into one preallocated uint8
        ``B×3×H×W`` array (shared memory in a worker, as ``default_collate`` allocates it) and returns a
        :class:`CollatedBatch`, so no per-sample tensors and no stacking copy; :func:`collate_batch` passes it on.
        The images and labels are identical to ``default_collate([self[i] for i in indices])``, and bad files are
        handled the same way (``on_bad_image``). Any other transform returns ``[self[i] for i in indices]``,
        what the fetcher does without this method.

        Raises:
            ValueError: An image has a different size than the batch's first; the message names both files.
        """
        if not self.fetches_batches:
            return [self[i] for i in indices]
        return decode_batch(indices, self._load, lambda i: repr(str(self.paths[i])), self.labels, self.worker_buffers)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded RGB image for sample ``index`` and the index it really came from (another one when skipped)."""
        try:
            return read_rgb(self.paths[index]), index
        except OSError as error:
            if self.on_bad_image == "error":
                raise OSError(
                    f"{error} (training sample {index}; data.on_bad_image=skip skips and records it)"
                ) from error
            return self._substitute(index, error)

    def _substitute(self, index: int, error: OSError) -> tuple[np.ndarray, int]:
        # The next readable sample keeps the batch full; a bounded search so a folder of garbage fails loudly.
        self._report(str(self.paths[index]), error)
        for step in range(1, 17):
            other = (index + step) % len(self.paths)
            try:
                return read_rgb(self.paths[other]), other
            except OSError as other_error:
                self._report(str(self.paths[other]), other_error)
        raise OSError(f"16 consecutive unreadable training images after sample {index}; last: {error}")

    def _report(self, path: str, error: OSError) -> None:
        if path in self._reported:  # once per file and worker, not once per epoch
            return
        self._reported.add(path)
        log.warning("skipping unreadable training image at load time: %s", error)
        if self.bad_image_log is not None:
            reason = str(error).replace("\t", " ").replace("\n", " ")
            # One short O_APPEND write per line: lines from several workers do not interleave.
            with open(self.bad_image_log, "a") as f:
                f.write(f"{path}\t{reason} [at load time, pid {os.getpid()}]\n")


class IndexedDataset(Dataset):
    """A view of another ``(image, label)`` dataset: sample ``i`` is ``base[index[i]]``'s image with ``labels[i]``.

    This is how identity exclusion, outlier noise (a different image under the same label) and symmetric noise (a
    different label) reach datasets that are not path lists, such as RecordIO packs.
    """

    def __init__(self, base: Dataset, index: np.ndarray, labels: np.ndarray) -> None:
        if len(index) != len(labels):
            raise ValueError(f"IndexedDataset: {len(index)} indices but {len(labels)} labels")
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, _ = self.base[int(self.index[i])]
        return image, int(self.labels[i])

    @property
    def transform(self) -> Any:
        """The base dataset's transform, so :class:`~facetrain.data.sampler.EpochSeeded` seeds it per sample."""
        return getattr(self.base, "transform", None)

    @property
    def fetches_batches(self) -> bool:
        """Whether :meth:`__getitems__` hands whole uint8 batches on from the base dataset."""
        return bool(getattr(self.base, "fetches_batches", False))

    def __getitems__(self, indices: Sequence[int]) -> CollatedBatch | list[tuple[torch.Tensor, int]]:
        """The base dataset's batched fetch of the mapped indices, relabelled; else sample by sample."""
        if not self.fetches_batches:
            return [self[i] for i in indices]
        positions = np.asarray(indices, dtype=np.int64)
        batch = self.base.__getitems__(self.index[positions].tolist())
        if isinstance(batch, CollatedBatch):
            batch.labels.numpy()[:] = self.labels[positions]
            return batch
        return [(image, int(label)) for (image, _), label in zip(batch, self.labels[positions], strict=True)]


class ImageList(Dataset):
    """Images only, in the order given: what the evaluation callbacks embed."""

    def __init__(self, paths: Sequence[str] | np.ndarray, transform: Transform | None = None) -> None:
        self.paths = np.asarray(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.transform, read_rgb(self.paths[index]))
