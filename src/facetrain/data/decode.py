"""The one image decoder: encoded bytes or a file to an RGB array, with the byte checks and decoder warnings.

Decoding uses OpenCV (``cv2.imdecode``, libjpeg-turbo in the opencv-python wheels): on 112×112 CASIA-style JPEGs it
is the fastest decoder this project has (``scripts/bench_loader.py`` compares it with PIL), and OpenCV >= 4.10
decodes straight to RGB. Every read checks the bytes first, because OpenCV returns a half-grey image instead of an
error for a truncated JPEG (libjpeg only prints "Premature end of JPEG file"), and a silently damaged training image
is worse than a loud failure. Damage in the middle of the data (start and end markers intact) shows only as such a
libjpeg warning: :func:`decode_checked`, the full check (``data.verify_images=decode`` and alignment), decodes and
catches those warnings too. Training folders, RecordIO packs, ``.bin`` packs, alignment and inference all decode here.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from typing import Any

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type + its fixed CRC: the last 8 bytes of every complete PNG
TAIL_BYTES = 1024  # room for the zero/whitespace padding some encoders append after the end marker
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
    problem = bytes_problem(buffer[:12].tobytes(), buffer[-TAIL_BYTES:].tobytes(), buffer.size)
    if problem is not None:
        return None, problem
    image, warnings = _imdecode_reporting(buffer, flags)
    if image is None:
        return None, "undecodable (corrupt or unsupported format)" + (f": {warnings}" if warnings else "")
    if warnings:
        return image, f"damaged image data (the decoder reports: {warnings})"
    return image, None


def rgb_or_problem(data: bytes | bytearray | np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The fast decode: ``(H×W×3 uint8 RGB, None)``, or ``(None, reason)`` for empty, truncated or undecodable data.

    Only the end markers are checked (:func:`bytes_problem`), not the decoder's warnings: this is the per-sample
    path of the loaders; :func:`decode_checked` is the full check. Callers wrap the reason in their own error, which
    names the file, record or pack entry.
    """
    if isinstance(data, bytes | bytearray):
        buffer = np.frombuffer(data, dtype=np.uint8)
        problem = bytes_problem(bytes(data[:12]), bytes(data[-TAIL_BYTES:]), len(data))
    else:
        buffer = data.reshape(-1)
        problem = bytes_problem(buffer[:12].tobytes(), buffer[-TAIL_BYTES:].tobytes(), buffer.size)
    if problem is not None:
        return None, problem
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    except cv2.error:
        image = None
    if image is None:
        return None, "undecodable (corrupt or unsupported format)"
    return (cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if _IMREAD_RGB is None else image), None


def decode_rgb(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """Decode encoded image bytes to an ``H×W×3`` uint8 RGB array (:func:`rgb_or_problem`).

    Raises:
        OSError: Empty, truncated or undecodable data; the message names ``name`` and the reason.
    """
    image, problem = rgb_or_problem(data)
    if image is None:
        raise OSError(f"cannot read image {name!r}: {problem}")
    return image


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
