"""Pure-Python reader and writer for MXNet RecordIO face packs (InsightFace ``train.rec``, ``train.idx``, ``property``).

No ``mxnet`` import: the format is small enough to read with :mod:`struct` (see ``shared/reference/insightface.md``
§1.4; the sources named below are dmlc-core ``src/recordio.cc``, mxnet ``python/mxnet/recordio.py`` and insightface
``recognition/arcface_torch/dataset.py::MXFaceDataset`` and ``recognition/arcface_mxnet/common/rec_builder.py``).

Layout:

* **Framing** (dmlc-core ``RecordIOWriter::WriteRecord``): each record is ``uint32 magic 0xced7230a``,
  ``uint32 lrec`` (``cflag = lrec >> 29``, ``length = lrec & (2**29 - 1)``), ``length`` payload bytes, zero padding
  to a multiple of 4. When the magic number occurs in the payload at a 4-byte aligned position, the writer cuts the
  payload there and drops those 4 bytes: the parts are framed with ``cflag`` 1 (first), 2 (middle) and 3 (last), and
  ``RecordIOReader::ReadRecord`` re-inserts the magic between parts when joining them. All integers little-endian.
* **Payload** (mxnet ``recordio.pack``/``unpack``): an ``IRHeader`` packed as ``IfQQ`` (flag uint32, label float32,
  id uint64, id2 uint64; 24 bytes). If ``flag > 0``, ``flag`` float32 labels follow and ``label`` is ignored. The
  encoded image (JPEG/PNG) is the rest.
* **Index** ``train.idx``: text lines ``key<TAB>offset`` giving the byte offset of each record's first frame.
* **InsightFace packs**: key 0 is a header record with ``flag > 0`` and an empty image part; ``label[0]`` is one
  past the last image key (images are keys ``1 .. label[0]-1``) and ``label[1]`` is one past the last identity
  record. Keys ``label[0] .. label[1]-1`` each hold one identity's image-key range ``(start, end)``. ``property``
  holds ``num_classes,height,width``. Packs made by ``im2rec`` have no header record: every key is an image.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from facetrain.data.batches import CollatedBatch, decode_batch
from facetrain.data.dataset import FaceDataset
from facetrain.data.decode import rgb_or_problem
from facetrain.data.shared_batches import DEFAULT_SLOTS
from facetrain.data.transforms import Transform, Uint8CHW, to_tensor
from facetrain.utils.io import atomic_write

__all__ = [
    "MAGIC",
    "IRHeader",
    "PackInfo",
    "RecordIOError",
    "RecordIOFaces",
    "encode_record",
    "pack",
    "pack_paths",
    "read_idx",
    "read_property",
    "unpack",
    "write_recordio",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # mxnet _IR_FORMAT 'IfQQ': native alignment adds no padding, so it is these 24 bytes
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_FLOAT32_EXACT_INT = 1 << 24  # largest range in which every integer label survives the float32 round trip
# Header scan: frame + IRHeader + the first float of a label vector, enough to get an image's class.
_SCAN_BYTES = _FRAME.size + _IR.size + 4


class RecordIOError(ValueError):
    """A RecordIO pack is malformed; the message names the file and, where known, the record key and byte offset."""


class IRHeader(NamedTuple):
    """An mxnet ``IRHeader``: ``label`` is a float when ``flag == 0``, else a tuple of ``flag`` floats."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


class PackInfo(NamedTuple):
    """What :func:`write_recordio` wrote."""

    num_images: int
    num_classes: int
    rec_path: Path
    idx_path: Path
    property_path: Path | None


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _where(path: os.PathLike | str, offset: int, key: int | None = None) -> str:
    record = f"record key {key} at byte offset {offset}" if key is not None else f"record at byte offset {offset}"
    return f"{os.fspath(path)}: {record}"


def pack_paths(root_or_prefix: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Resolve ``(rec, idx, property)`` paths from a pack directory or a file prefix.

    A directory means ``<dir>/train.{rec,idx}`` (InsightFace's layout); otherwise the argument is a prefix
    ``<prefix>.rec`` / ``<prefix>.idx`` (a trailing ``.rec`` or ``.idx`` is dropped). ``property`` lives next to them.
    """
    path = Path(root_or_prefix)
    if path.is_dir():
        prefix = path / "train"
    elif path.suffix in (".rec", ".idx"):
        prefix = path.with_suffix("")
    else:
        prefix = path
    return prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx"), prefix.parent / "property"


def read_idx(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.idx`` file (``key<TAB>offset`` lines, mxnet ``MXIndexedRecordIO``) in file order.

    Returns:
        ``(keys, offsets)``, both int64 arrays.

    Raises:
        FileNotFoundError: The file does not exist.
        RecordIOError: A line is not two non-negative integers, a key repeats, or the file lists no record; the
            message names the file and the 1-based line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RecordIO index not found: {path}")
    keys: list[int] = []
    offsets: list[int] = []
    with path.open("r", encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue  # blank (e.g. trailing) lines carry nothing
            try:
                key, offset = (int(x) for x in fields) if len(fields) == 2 else (None, None)
            except ValueError:
                key = offset = None
            if key is None or offset is None or key < 0 or offset < 0:
                raise RecordIOError(
                    f"{path}:{lineno}: expected 'key<TAB>offset' (two non-negative integers), got {line.rstrip()!r}"
                )
            keys.append(key)
            offsets.append(offset)
    if not keys:
        raise RecordIOError(f"{path}: index lists no records")
    keys_arr = np.asarray(keys, dtype=np.int64)
    unique, counts = np.unique(keys_arr, return_counts=True)
    if counts.max() > 1:
        dup = int(unique[np.argmax(counts > 1)])
        lineno = [i for i, k in enumerate(keys) if k == dup][1] + 1
        raise RecordIOError(f"{path}: key {dup} appears more than once (again near entry {lineno})")
    return keys_arr, np.asarray(offsets, dtype=np.int64)


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """Read an InsightFace ``property`` file: one line ``num_classes,height,width``.

    Raises:
        RecordIOError: The content is not three positive integers; the message names the file.
    """
    path = Path(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise RecordIOError(f"{path}: expected one line 'num_classes,height,width' of positive integers, got {text!r}")
    return values  # type: ignore[return-value]


def pack(header: IRHeader, data: bytes = b"") -> bytes:
    """Build a record payload like mxnet ``recordio.pack``: a float label gives ``flag = 0``; a label sequence gives
    ``flag = len(label)``, header label 0 and the float32 labels before ``data``."""
    if isinstance(header.label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(header.label), header.id, header.id2) + bytes(data)
    labels = np.asarray(header.label, dtype="<f4")
    return _IR.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + bytes(data)


def _unpack(payload: bytes, where: str) -> tuple[IRHeader, bytes]:
    if len(payload) < _IR.size:
        raise RecordIOError(f"{where}: payload of {len(payload)} bytes is shorter than the {_IR.size}-byte IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    if flag == 0:
        return IRHeader(0, label, id_, id2), payload[_IR.size :]
    end = _IR.size + 4 * flag
    if len(payload) < end:
        raise RecordIOError(
            f"{where}: IRHeader flag {flag} announces {flag} float32 labels ({4 * flag} bytes) but "
            f"the payload has only {len(payload) - _IR.size} bytes after the header"
        )
    labels = struct.unpack_from(f"<{flag}f", payload, _IR.size)
    return IRHeader(flag, labels, id_, id2), payload[end:]


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split a record payload into its :class:`IRHeader` and the remaining (image) bytes, like mxnet ``unpack``.

    Raises:
        RecordIOError: The payload is shorter than its header and label vector.
    """
    return _unpack(payload, "record")


def encode_record(payload: bytes) -> bytes:
    """Frame one payload exactly like dmlc-core ``RecordIOWriter::WriteRecord``.

    The payload is cut at every 4-byte aligned occurrence of the magic number (those 4 bytes are dropped and restored
    by the reader), each part is framed with its ``cflag``, and only the end is zero-padded: cut points are aligned,
    so every part but the last has a length divisible by 4.

    Raises:
        ValueError: The payload is 2**29 bytes or longer (the length field has 29 bits).
    """
    payload = bytes(payload)
    n = len(payload)
    if n >= 1 << _LENGTH_BITS:
        raise ValueError(f"RecordIO records must be shorter than 2**29 bytes, got {n}")
    out = bytearray()
    start = 0
    i = payload.find(_MAGIC_BYTES)  # dmlc tests every aligned i < n & ~3; find() visits only the candidates
    while i >= 0:
        if i % 4:
            i = payload.find(_MAGIC_BYTES, i + 1)
            continue
        out += _FRAME.pack(MAGIC, ((1 if start == 0 else 2) << _LENGTH_BITS) | (i - start))
        out += payload[start:i]
        start = i + 4
        i = payload.find(_MAGIC_BYTES, start)
    out += _FRAME.pack(MAGIC, ((3 if start else 0) << _LENGTH_BITS) | (n - start))
    out += payload[start:]
    out += b"\0" * (_align4(n) - n)
    return bytes(out)


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes at ``offset`` without moving a shared file position (short only at end of file)."""
    chunks = []
    while size > 0:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, size, offset)
        else:  # Windows: no pread; each process has its own descriptor (see RecordIOFaces._fd), so seeking is safe
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, offset: int, path: Path, key: int | None) -> tuple[int, int]:
    head = _pread(fd, _FRAME.size, offset)
    if len(head) < _FRAME.size:
        raise RecordIOError(
            f"{_where(path, offset, key)}: truncated, {len(head)} of the {_FRAME.size} frame-header "
            "bytes are left in the file"
        )
    magic, lrec = _FRAME.unpack(head)
    if magic != MAGIC:
        raise RecordIOError(
            f"{_where(path, offset, key)}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}); the "
            "index points outside a record or the file is corrupt"
        )
    return lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK


def read_record(fd: int, offset: int, path: Path, key: int | None = None) -> bytes:
    """Read the record whose first frame starts at ``offset``, joining multi-part (cflag 1/2/3) records.

    Follows dmlc-core ``RecordIOReader::ReadRecord``: each part is followed by padding to 4 bytes, and the magic
    number is re-inserted between consecutive parts.

    Raises:
        RecordIOError: Truncated frame or payload, bad magic, or a continuation flag out of sequence; the message
            names the file, the key and the byte offset of the offending frame.
    """
    parts = []
    pos = offset
    cflag, length = _read_frame(fd, pos, path, key)
    if cflag not in (0, 1):
        raise RecordIOError(
            f"{_where(path, offset, key)}: record starts with continuation flag {cflag} "
            "(2 = middle, 3 = end part); the index points inside a multi-part record"
        )
    while True:
        data = _pread(fd, length, pos + _FRAME.size)
        if len(data) < length:
            raise RecordIOError(
                f"{_where(path, pos, key)}: truncated, the frame announces {length} payload bytes "
                f"but only {len(data)} are left in the file"
            )
        parts.append(data)
        if cflag in (0, 3):
            break
        pos += _FRAME.size + _align4(length)
        cflag, length = _read_frame(fd, pos, path, key)
        if cflag not in (2, 3):
            raise RecordIOError(
                f"{_where(path, pos, key)}: expected a continuation frame (flag 2 or 3) of the "
                f"multi-part record starting at offset {offset}, got flag {cflag}"
            )
    return _MAGIC_BYTES.join(parts)


class RecordIOFaces(FaceDataset):
    """``(image, label)`` samples from an InsightFace / MXNet RecordIO pack, without mxnet.

    Construction reads the index, the header record (key 0) if any, ``property`` if present, and the 24-36 header
    bytes of every image record (never the images) to get ``labels``. Packs with a header record use image keys
    ``1 .. label[0]-1`` like ``MXFaceDataset``; otherwise every key in ``.idx`` order is an image. Key 0 counts as a
    header only if it has a label vector (``flag >= 2``) and no image bytes, so an ``im2rec`` pack whose first image
    carries a label vector is still read correctly.

    The file is opened lazily in each process (``os.getpid`` is checked on every read and the descriptor is never
    pickled), so the dataset is safe with any number of DataLoader workers under fork or spawn.

    Args:
        root_or_prefix: Pack directory holding ``train.rec``/``train.idx``/``property``, or a prefix
            ``<prefix>.rec``/``<prefix>.idx`` (``property`` next to them).
        transform: Albumentations-style transform applied like :class:`facetrain.data.image_files.LabelledImages`.
        decode: If False, ``__getitem__`` returns the encoded image bytes instead of a tensor.
        worker_buffers: With a plain :class:`~facetrain.data.transforms.Uint8CHW` transform, the reused shared-memory
            batch buffers per DataLoader worker (:meth:`__getitems__`; the data module sets ``data.worker_buffers``).

    Attributes:
        keys: int64 record key of each image, in dataset order.
        labels: int64 class of each image, from its IRHeader (``label`` or ``label[0]`` for a label vector).
        num_classes: ``max(labels) + 1``; checked against ``property`` when that file exists.
        image_size: ``(height, width)`` from ``property``, or None without one.
        header: The IRHeader of the key-0 header record, or None for a headerless pack.

    Raises:
        FileNotFoundError: The ``.rec`` or ``.idx`` file is missing.
        RecordIOError: Malformed index, an offset past the end of the file, a truncated or corrupt record header, a
            negative or non-integer label, a header range naming keys absent from the index, or a ``property``
            class count that disagrees with the labels.
    """

    def __init__(
        self,
        root_or_prefix: str | os.PathLike,
        transform: Transform | None = None,
        decode: bool = True,
        worker_buffers: int = DEFAULT_SLOTS,
    ) -> None:
        self.rec_path, self.idx_path, prop = pack_paths(root_or_prefix)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"RecordIO data file not found: {self.rec_path}")
        self.property_path = prop if prop.is_file() else None
        self.transform = transform
        self.decode = decode
        self.worker_buffers = int(worker_buffers)
        self._fd: int | None = None
        self._pid: int | None = None

        all_keys, all_offsets = read_idx(self.idx_path)
        file_size = self.rec_path.stat().st_size
        beyond = np.flatnonzero(all_offsets + _FRAME.size > file_size)
        if beyond.size:
            k = beyond[0]
            raise RecordIOError(
                f"{self.idx_path}: key {all_keys[k]} has offset {all_offsets[k]}, past the end of "
                f"{self.rec_path} ({file_size} bytes); {beyond.size} index entries point past the end "
                "(truncated .rec or an .idx from another pack?)"
            )

        fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            self.header = self._read_header(fd, all_keys, all_offsets)
            if self.header is None:
                self.keys, offsets = all_keys, all_offsets
            else:
                self.keys, offsets = self._header_keys(all_keys, all_offsets)
            self.labels = self._scan_labels(fd, self.keys, offsets, file_size)
        finally:
            os.close(fd)
        self._offsets = offsets
        self.num_classes = int(self.labels.max()) + 1
        self.image_size: tuple[int, int] | None = None
        if self.property_path is not None:
            n, h, w = read_property(self.property_path)
            if n != self.num_classes:
                raise RecordIOError(
                    f"{self.property_path}: property says {n} classes but the labels of the {len(self.labels)} "
                    f"images in {self.rec_path} give {self.num_classes} (max label {self.num_classes - 1})"
                )
            self.image_size = (h, w)

    def _read_header(self, fd: int, keys: np.ndarray, offsets: np.ndarray) -> IRHeader | None:
        """The key-0 header record, or None when the pack has none (no key 0, ``flag == 0``, or image bytes)."""
        hits = np.flatnonzero(keys == 0)
        if not hits.size:
            return None
        offset = int(offsets[hits[0]])
        header, data = _unpack(read_record(fd, offset, self.rec_path, 0), _where(self.rec_path, offset, 0))
        if header.flag < 2 or data:
            return None
        return header

    def _header_keys(self, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image keys ``1 .. label[0]-1`` named by the header record, with their offsets."""
        assert self.header is not None
        first_identity, end = self.header.label[0], self.header.label[1]  # type: ignore[index]
        where = _where(self.rec_path, int(offsets[np.flatnonzero(keys == 0)[0]]), 0)
        integral = all(math.isfinite(v) and v == int(v) for v in (first_identity, end))
        if not (integral and end >= first_identity >= 2):
            raise RecordIOError(
                f"{where}: header record label {self.header.label[:2]} is not an image/identity "  # type: ignore[index]
                "key range (label[0] = one past the last image key >= 2, label[1] >= label[0])"
            )
        image_keys = np.arange(1, int(first_identity), dtype=np.int64)
        order = np.argsort(keys)
        pos = np.searchsorted(keys, image_keys, sorter=order)
        pos = order[np.minimum(pos, len(keys) - 1)]
        missing = np.flatnonzero(keys[pos] != image_keys)
        if missing.size:
            raise RecordIOError(
                f"{where}: header record says the images are keys 1..{int(first_identity) - 1}, "
                f"but {missing.size} of them (first: {image_keys[missing[0]]}) are not in {self.idx_path}"
            )
        return image_keys, offsets[pos]

    def _scan_labels(self, fd: int, keys: np.ndarray, offsets: np.ndarray, file_size: int) -> np.ndarray:
        """Read each image record's class from its frame + IRHeader bytes only."""
        raw = np.empty(len(keys), dtype=np.float32)
        for i, (key, offset) in enumerate(zip(keys.tolist(), offsets.tolist())):
            buf = _pread(fd, _SCAN_BYTES, offset)
            if len(buf) < _FRAME.size:
                _read_frame(fd, offset, self.rec_path, key)  # raises the located "truncated" error
            magic, lrec = _FRAME.unpack_from(buf)
            cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
            if magic != MAGIC or cflag not in (0, 1):
                read_record(fd, offset, self.rec_path, key)  # raises the located bad-magic / continuation error
            if offset + _FRAME.size + length > file_size:
                raise RecordIOError(
                    f"{_where(self.rec_path, offset, key)}: truncated, the frame announces {length} "
                    f"payload bytes but only {file_size - offset - _FRAME.size} are left in the file"
                )
            where = _where(self.rec_path, offset, key)
            if cflag == 1 or length < _SCAN_BYTES - _FRAME.size:
                # Multi-part record (the magic occurs in its first bytes) or a tiny record: read it whole, it is rare.
                header, data = _unpack(read_record(fd, offset, self.rec_path, key), where)
                flag, n_data = header.flag, len(data)
                label = header.label if flag == 0 else header.label[0]  # type: ignore[index]
            else:
                flag, label, _, _ = _IR.unpack_from(buf, _FRAME.size)
                n_data = length - _IR.size - 4 * flag
                if n_data < 0:
                    raise RecordIOError(
                        f"{where}: IRHeader flag {flag} announces {flag} float32 labels but the "
                        f"{length}-byte payload has only {length - _IR.size} bytes after the header"
                    )
                if flag > 0:
                    label = struct.unpack_from("<f", buf, _FRAME.size + _IR.size)[0]
            if n_data == 0:
                raise RecordIOError(
                    f"{where}: record has no image bytes (a header or identity record listed as an image?)"
                )
            raw[i] = label
        bad = np.flatnonzero(~np.isfinite(raw) | (raw < 0) | (raw != np.floor(raw)))
        if bad.size:
            i = bad[0]
            raise RecordIOError(
                f"{_where(self.rec_path, int(offsets[i]), int(keys[i]))}: label {float(raw[i])!r} is not a "
                f"non-negative integer class id ({bad.size} such records)"
            )
        return raw.astype(np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({os.fspath(self.rec_path)!r}, images={len(self)}, "
            f"num_classes={self.num_classes}, header={'yes' if self.header is not None else 'no'})"
        )

    def _handle(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            # A descriptor inherited through fork shares nothing we rely on (reads use pread), but a fresh one per
            # process keeps the Windows seek+read fallback race-free and survives spawn, where _fd is None.
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = pid
        return self._fd

    def close(self) -> None:
        """Close this process's descriptor (it reopens on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None  # an open descriptor means nothing in another process
        return state

    def _index(self, index: int) -> int:
        n = len(self.keys)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images in {self.rec_path}")
        return index % n

    def read_bytes(self, index: int) -> bytes:
        """The encoded image bytes of image ``index`` (exactly as stored)."""
        i = self._index(index)
        key, offset = int(self.keys[i]), int(self._offsets[i])
        payload = read_record(self._handle(), offset, self.rec_path, key)
        return _unpack(payload, _where(self.rec_path, offset, key))[1]

    def read_image(self, index: int) -> np.ndarray:
        """Image ``index`` decoded to an ``H×W×3`` uint8 RGB array.

        Raises:
            RecordIOError: The bytes are not a decodable image; the message names the file, key and offset.
        """
        i = self._index(index)
        image, problem = rgb_or_problem(self.read_bytes(i))
        if image is None:
            raise RecordIOError(f"{self.describe(i)}: image bytes cannot be decoded ({problem})")
        return image

    def describe(self, index: int) -> str:
        i = self._index(index)
        return _where(self.rec_path, int(self._offsets[i]), int(self.keys[i]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor | bytes, int]:
        label = int(self.labels[self._index(index)])
        if not self.decode:
            return self.read_bytes(index), label
        return to_tensor(self.transform, self.read_image(index)), label

    @property
    def fetches_batches(self) -> bool:
        """Whether :meth:`__getitems__` builds whole uint8 batches (decoding, plain ``Uint8CHW``, no CPU pipeline)."""
        return self.decode and type(self.transform) is Uint8CHW and self.transform.pre is None

    def __getitems__(self, indices: list[int]) -> CollatedBatch | list[tuple[torch.Tensor | bytes, int]]:
        """A whole batch at once, like :meth:`facetrain.data.image_files.LabelledImages.__getitems__`: decoded straight
        into one uint8 ``B×3×H×W`` array with a plain ``Uint8CHW`` transform, else ``[self[i] for i in indices]``."""
        if not self.fetches_batches:
            return [self[i] for i in indices]
        return decode_batch(
            [self._index(i) for i in indices], lambda i: (self.read_image(i), i), self.describe, self.labels,
            self.worker_buffers,
        )  # fmt: skip


def _check_label(label: Any, position: int) -> int:
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer, float, np.floating)):
        raise ValueError(f"write_recordio: item {position}: label must be an integer, got {label!r}")
    if isinstance(label, (float, np.floating)) and not (math.isfinite(label) and label == int(label)):
        raise ValueError(f"write_recordio: item {position}: label must be an integer, got {label!r}")
    value = int(label)
    if not 0 <= value < _FLOAT32_EXACT_INT:
        raise ValueError(
            f"write_recordio: item {position}: label {value} outside [0, 2**24), the range a float32 "
            "IRHeader label stores exactly"
        )
    return value


def _write_records(
    rec: IO[bytes], idx: IO[str], items: Iterable[tuple[bytes, int]], header_record: bool
) -> tuple[int, int]:
    """Write :func:`write_recordio`'s records and index lines to open files.

    Returns:
        The number of images and the largest label.
    """

    def write(key: int, payload: bytes) -> None:
        idx.write(f"{key}\t{rec.tell()}\n")
        rec.write(encode_record(payload))

    key = 1 if header_record else 0
    identities: list[list[int]] = []  # [label, first key, end key]
    n = max_label = 0
    for position, (data, label) in enumerate(items):
        value = _check_label(label, position)
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise ValueError(
                f"write_recordio: item {position}: image must be non-empty bytes, "
                f"got {type(data).__name__} {data!r:.40}"
            )
        if header_record:
            if identities and value < identities[-1][0]:
                raise ValueError(
                    f"write_recordio: item {position}: label {value} after {identities[-1][0]}; "
                    "with header_record=True labels must be non-decreasing (grouped by identity)"
                )
            if not identities or value != identities[-1][0]:
                identities.append([value, key, key])
            identities[-1][2] = key + 1
        write(key, pack(IRHeader(0, float(value), key, 0), data))
        key += 1
        n += 1
        max_label = max(max_label, value)
    if n == 0:
        raise ValueError("write_recordio: no items to write")
    if header_record:
        first_identity = key
        for _, start, end in identities:
            write(key, pack(IRHeader(2, (float(start), float(end)), key, 0)))
            key += 1
        write(0, pack(IRHeader(2, (float(first_identity), float(key)), 0, 1)))
    return n, max_label


def write_recordio(
    prefix: str | os.PathLike,
    items: Iterable[tuple[bytes, int]],
    header_record: bool = True,
    write_property: bool = True,
    image_size: tuple[int, int] = (112, 112),
) -> PackInfo:
    """Write ``(encoded image bytes, label)`` items as a RecordIO pack in InsightFace's layout.

    With ``header_record`` the layout is that of insightface ``rec_builder.py::RecBuilder``: images get keys
    ``1..n`` (``IRHeader(0, label, key, 0)``), then one identity record per label present, in label order, with
    ``flag = 2`` and label vector ``(first image key, one past the last)``, then key 0, the header, with label vector
    ``(n + 1, n + 1 + number of identity records)`` and ``id2 = 1``. As in RecBuilder the header is written last, so
    the items can stream; readers find it through the index. Identity ranges need each label's images to be
    contiguous, so labels must then be non-decreasing. Without ``header_record`` images get keys ``0..n-1`` in any
    label order (an ``im2rec``-style pack). ``property`` reads ``max(label) + 1,height,width``.

    The image bytes are stored unchanged. Files are written under temporary names and renamed at the end, so an
    error leaves no half-written pack.

    Args:
        prefix: Output prefix ``<prefix>.rec``/``<prefix>.idx``, or an existing directory for ``<dir>/train.*``.
        items: ``(image_bytes, label)`` pairs; labels are non-negative integers below 2**24.
        header_record: Write the InsightFace header and identity records.
        write_property: Write ``property`` next to the pack.
        image_size: ``(height, width)`` recorded in ``property``.

    Returns:
        The number of images and classes and the paths written.

    Raises:
        ValueError: An empty image, a bad label, decreasing labels with ``header_record``, or no items at all; the
            message names the item position.
    """
    rec_path, idx_path, prop_path = pack_paths(prefix)
    # One stack for all files: an error anywhere discards every one of them. Exits run last-in first-out, so the
    # renames go property, .rec, .idx: the index, by which readers find the pack, appears last.
    with contextlib.ExitStack() as files:
        idx = files.enter_context(atomic_write(idx_path, "w"))
        rec = files.enter_context(atomic_write(rec_path, "wb"))
        n, max_label = _write_records(rec, idx, items, header_record)
        if write_property:
            prop = files.enter_context(atomic_write(prop_path, "w"))
            prop.write(f"{max_label + 1},{image_size[0]},{image_size[1]}\n")
    return PackInfo(n, max_label + 1, rec_path, idx_path, prop_path if write_property else None)
