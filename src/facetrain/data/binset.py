"""InsightFace verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``).

A ``.bin`` is a pickle of ``(bins, issame_list)`` (``shared/reference/insightface.md`` §2; insightface
``recognition/arcface_torch/eval/verification.py::load_bin``): ``bins`` holds ``2 N`` encoded images, ``bins[2i]``
and ``bins[2i+1]`` being pair ``i`` in protocol order, and ``issame_list`` ``N`` booleans. Writers differ in what an
image is: the Python 2 ``lfw2pack.py`` stored the file bytes (a py2 ``str``, hence insightface's retry with
``encoding='bytes'``), ``build_eval_pack.py`` stores the ``numpy.ndarray`` returned by ``cv2.imencode``.

facetrain extends the layout to YouTube Faces, whose pairs are pairs of *videos*: in a video pack (``ytf.bin``,
written by ``scripts/pairs_to_bin.py --splits-file``) each of the ``2 N`` entries of ``bins`` is a list of encoded
frames (one video, in frame order) instead of one encoded image. Pairs keep the ``splits.txt`` order (each split a
consecutive block), and a video used by several pairs is one list object, which pickle stores once
(:class:`VideoBinSet`, :func:`load_video_bin`, :func:`write_video_bin`).

Packs are meant to hold images of the evaluation size (112×112). InsightFace's ``load_bin`` resizes an image of
another width (``mx.image.resize_short``, bicubic); :func:`load_bin` does the same, so a pack that mixes sizes
evaluates instead of failing after the first epoch: it reads every image's size from its header when the pack is
loaded, logs how many will be resized, and refuses one whose aspect ratio differs (InsightFace fails on it too),
naming the pack and the image index.

Unpickling runs code named by the file, so these files are loaded with :class:`SafeUnpickler`, which resolves only
the few globals that such packs need and that just build data (see :data:`ALLOWED_GLOBALS`); anything else is
refused before it is called.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.decode import encoded_size, rgb_or_problem
from facetrain.data.transforms import Transform, to_tensor
from facetrain.utils.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_GLOBALS",
    "BinFormatError",
    "BinImages",
    "BinSet",
    "SafeUnpickler",
    "UnsafeFileError",
    "VideoBinSet",
    "load_bin",
    "load_video_bin",
    "write_bin",
    "write_video_bin",
]

_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1"}


class UnsafeFileError(ValueError):
    """A pickle asks for a global outside :data:`ALLOWED_GLOBALS`; nothing from it was executed."""


class BinFormatError(ValueError):
    """A ``.bin`` file is not a valid verification pack, or one of its images does not decode."""


# Python 3 pickles ``bytes`` at protocol < 3 as ``_codecs.encode(latin1_text, 'latin1')`` and ``bytearray`` as
# ``bytearray(bytes)`` (py2: ``bytearray(unicode, 'latin-1')``); these wrappers accept exactly those argument shapes.
def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in _LATIN1:
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin1 text")
    return text.encode("latin-1")


def _bytes(data: Any = b"") -> bytes:
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"refused bytes({type(data).__name__}): only bytes-like data")
    return bytes(data)


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, str) and encoding in _LATIN1:
        return bytearray(data.encode("latin-1"))
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    raise pickle.UnpicklingError(f"refused bytearray({type(data).__name__}, {encoding!r}): only bytes or latin1 text")


def _numpy_attr(name: str, *modules: str) -> Callable[[], Any]:
    """Lazily resolve ``name`` in the first importable module (``numpy._core`` in NumPy 2, ``numpy.core`` in 1.x)."""

    def resolve() -> Any:
        for module in modules:
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {name} in {modules}")

    return resolve


_reconstruct = _numpy_attr("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_scalar = _numpy_attr("scalar", "numpy._core.multiarray", "numpy.core.multiarray")
_frombuffer = _numpy_attr("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")

#: Globals a ``.bin`` may name, mapped to what they resolve to. All build plain data from their arguments:
#: ``bytes``/``bytearray``/``_codecs.encode`` (restricted wrappers above) for byte strings at pickle protocol < 3 and
#: ``bytearray`` at 3-4; NumPy's array machinery for ``build_eval_pack.py`` packs (``cv2.imencode`` arrays):
#: ``_reconstruct`` + ``ndarray`` + ``dtype`` (protocol <= 4, spelled ``numpy.core`` by NumPy 1.x and
#: ``numpy._core`` by 2.x), ``_frombuffer`` (protocol 5) and ``scalar`` (NumPy scalars such as ``np.bool_``).
#: None of them imports or calls anything the file names, and an object array's items are themselves unpickled
#: through this same allow-list.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("builtins", "bytes"): lambda: _bytes,
    ("__builtin__", "bytes"): lambda: _bytes,
    ("builtins", "bytearray"): lambda: _bytearray,
    ("__builtin__", "bytearray"): lambda: _bytearray,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses every other global before calling it.

    Plain containers and scalars (lists, tuples, bytes, str, bool, int, float) need no global at all. A pickle that
    would call ``os.system``, ``builtins.eval``, ``subprocess.*`` or any class's ``__reduce__`` target fails at the
    ``find_class`` lookup, so nothing it names runs.
    """

    def __init__(self, file: Any, path: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.path = os.fspath(path)

    def find_class(self, module: str, name: str) -> Any:
        resolve = ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafeFileError(
                f"{self.path}: refused to unpickle global {module}.{name}; a verification .bin holds only image bytes "
                "and booleans, so this file is either not a .bin or crafted to run code"
            )
        return resolve()


def _load_pickle(path: Path) -> Any:
    """``pickle.load`` through :class:`SafeUnpickler`, with insightface's ``encoding='bytes'`` retry for py2 files."""
    for encoding in ("ASCII", "bytes"):
        try:
            with path.open("rb") as f:
                return SafeUnpickler(f, path, encoding=encoding).load()
        except UnsafeFileError:
            raise
        except UnicodeDecodeError:
            continue  # a Python 2 str holding JPEG bytes; retry as bytes like verification.py::load_bin
        except Exception as error:  # corrupt pickles raise many exception types; report them as one
            raise BinFormatError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error
    raise AssertionError("unreachable")  # the "bytes" encoding never raises UnicodeDecodeError


def _as_bytes(item: Any) -> bytes | None:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    # cv2.imencode returns an (n, 1) or (n,) uint8 array whose raw buffer is the encoded file.
    if (
        isinstance(item, np.ndarray)
        and item.dtype == np.uint8
        and (item.ndim == 1 or (item.ndim == 2 and 1 in item.shape))
    ):
        return item.tobytes()
    return None


def _pairs(path: Path, obj: Any, noun: str = "images") -> tuple[Sequence[Any], np.ndarray]:
    """Check the ``(bins, issame_list)`` structure: ``2 N`` entries and ``N`` flags (bool, or 0/1) as a bool array."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        found = f"{type(obj).__name__} of length {len(obj)}" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise BinFormatError(f"{path}: expected a pickled (bins, issame_list) pair, found {found}")
    bins, issame = obj
    if isinstance(issame, np.ndarray):
        issame = issame.tolist()
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise BinFormatError(
            f"{path}: bins and issame_list must be lists, found {type(bins).__name__} and {type(issame).__name__}"
        )
    if len(bins) != 2 * len(issame):
        raise BinFormatError(
            f"{path}: {len(bins)} {noun} for {len(issame)} pairs; a .bin holds 2 {noun} per pair "
            f"(expected {2 * len(issame)})"
        )
    flags = np.empty(len(issame), dtype=bool)
    for i, value in enumerate(issame):
        # bool, np.bool_ and the 0/1 integers some re-exports use; anything else would silently flip pairs.
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
            flags[i] = bool(value)
        else:
            raise BinFormatError(
                f"{path}: issame_list[{i}] is {type(value).__name__} {value!r:.40}, expected a bool (or 0/1)"
            )
    return bins, flags


def _image(path: Path, item: Any, what: str) -> bytes:
    data = _as_bytes(item)
    if not data:
        raise BinFormatError(
            f"{path}: {what} is {type(item).__name__} {item!r:.60}, expected non-empty encoded image bytes"
        )
    return data


def _validate(path: Path, obj: Any) -> tuple[list[bytes], np.ndarray]:
    """Check the ``(bins, issame_list)`` structure and convert it to ``(list[bytes], bool array)``."""
    bins, flags = _pairs(path, obj)
    return [_image(path, item, f"image {i}") for i, item in enumerate(bins)], flags


def _validate_videos(path: Path, obj: Any) -> tuple[list[list[bytes]], np.ndarray, np.ndarray]:
    """Check a video pack and convert it to ``(unique videos as lists of bytes, video of each entry, flags)``.

    Entries that are the same list object (how pickle restores one video used by several pairs) become one video.
    """
    bins, flags = _pairs(path, obj, "videos")
    videos: list[list[bytes]] = []
    seen: dict[int, int] = {}
    entry_video = np.empty(len(bins), dtype=np.int64)
    for i, entry in enumerate(bins):
        if id(entry) not in seen:
            if not isinstance(entry, (list, tuple)) or not entry:
                found = (
                    f"{type(entry).__name__} of length {len(entry)}"
                    if isinstance(entry, (list, tuple))
                    else (type(entry).__name__)
                )
                raise BinFormatError(
                    f"{path}: entry {i} (pair {i // 2}) is {found}, expected a non-empty list of encoded frames "
                    "(a video pack; image packs such as lfw.bin load with load_bin)"
                )
            seen[id(entry)] = len(videos)
            videos.append([_image(path, item, f"entry {i} (pair {i // 2}) frame {j}") for j, item in enumerate(entry)])
        entry_video[i] = seen[id(entry)]
    return videos, entry_video, flags


def _decode(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes to ``H×W×3`` uint8 RGB with the one decoder; a failure names ``where``."""
    image, problem = rgb_or_problem(data)
    if image is None:
        raise BinFormatError(f"{where} cannot be decoded ({len(data)} bytes, {problem})")
    return image


def _fit(image: np.ndarray, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """``image`` at the pack's ``(height, width)``: resized like InsightFace's ``load_bin`` when it differs.

    InsightFace resizes the shorter side to the evaluation size with bicubic interpolation (``resize_short``,
    ``interp=2``); for the same aspect ratio that is this resize to ``size``. Another aspect ratio cannot become the
    evaluation size without distorting the face, so it is refused (InsightFace's loader fails on it too).

    Raises:
        BinFormatError: The aspect ratio differs; the message names ``where`` (pack and image index).
    """
    if size is None or image.shape[:2] == size:
        return image
    _check_resizable(image.shape[:2], size, where)
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def _check_resizable(shape: tuple[int, int], size: tuple[int, int], where: str) -> None:
    if shape[0] * size[1] != shape[1] * size[0]:
        raise BinFormatError(
            f"{where} is {shape[1]}x{shape[0]} (width x height) but the pack's images are {size[1]}x{size[0]}: "
            "another aspect ratio cannot be resized to the evaluation size without distorting the face "
            "(InsightFace's load_bin fails on it too); rebuild the pack from aligned crops"
        )


def _pack_image_size(path: Path, images: Sequence[bytes], image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """The ``(height, width)`` every image of a pack is evaluated at, checked against each image's header.

    Args:
        path: The pack, for messages.
        images: Its encoded images.
        image_size: The evaluation size; None takes the pack's most common size (all of them in a sound pack).

    Returns:
        The size, or None when no image header could be read (the decoder reports those images later).

    Raises:
        BinFormatError: An image has another aspect ratio; the message names the pack and the image index.
    """
    sizes = [encoded_size(data) for data in images]
    known = Counter(size for size in sizes if size is not None)
    if image_size is not None:
        target: tuple[int, int] | None = (int(image_size[0]), int(image_size[1]))
    else:
        target = max(known, key=lambda size: (known[size], size)) if known else None
    if target is None:
        return None
    odd = [i for i, size in enumerate(sizes) if size is not None and size != target]
    for i in odd:
        _check_resizable(sizes[i], target, f"{path}: image {i} (pair {i // 2})")
    if odd:
        first = sizes[odd[0]]
        log.warning(
            "%s: %d of %d images are not %dx%d (the first is image %d, %dx%d); resizing them as InsightFace's "
            "load_bin does (bicubic)",
            path, len(odd), len(images), target[1], target[0], odd[0], first[1], first[0],
        )  # fmt: skip
    return target


def _dump_atomic(path: Path, obj: Any) -> Path:
    """``pickle.dump(obj, HIGHEST_PROTOCOL)`` through a temporary file in the same directory and a rename."""
    with atomic_write(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


class BinImages(Dataset):
    """Tensors of a :class:`BinSet`'s images in file order (``2i`` and ``2i+1`` are pair ``i``)."""

    def __init__(self, binset: BinSet, transform: Transform | None = None) -> None:
        self.binset = binset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.binset.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.transform, self.binset.decode(index))


class BinSet:
    """A loaded verification pack: encoded images (decoded on demand) and the same/not-same flag of each pair.

    Attributes:
        images: ``2 N`` encoded images; ``images[2i]``, ``images[2i+1]`` form pair ``i``.
        issame: ``N`` booleans.
        path: The file it came from, used in error messages (None when built in memory).
        image_size: ``(height, width)`` that :meth:`decode` returns every image at (others are resized like
            InsightFace's ``load_bin``); None returns them as stored.
    """

    def __init__(
        self,
        images: Sequence[bytes],
        issame: Sequence[bool] | np.ndarray,
        path: str | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        self.images = list(images)
        self.issame = np.asarray(issame, dtype=bool)
        self.path = path
        self.image_size = image_size
        if len(self.images) != 2 * len(self.issame):
            raise BinFormatError(
                f"{path or 'BinSet'}: {len(self.images)} images for {len(self.issame)} pairs "
                "(2 images per pair expected)"
            )

    def __len__(self) -> int:
        return len(self.issame)

    def __repr__(self) -> str:
        return f"BinSet({self.path!r}, pairs={len(self)}, same={int(self.issame.sum())})"

    def decode(self, index: int) -> np.ndarray:
        """Image ``index`` (0 .. 2N-1) as an ``H×W×3`` uint8 RGB array, at :attr:`image_size` if set.

        Raises:
            BinFormatError: The bytes do not decode, or the image has another aspect ratio than
                :attr:`image_size`; the message names the file and the image index.
        """
        where = f"{self.path or 'BinSet'}: image {index} (pair {index // 2})"
        return _fit(_decode(self.images[index], where), self.image_size, where)

    def as_dataset(self, transform: Transform | None = None) -> BinImages:
        """A Dataset of the images as tensors, in file order, through ``transform`` like ``ImageList``."""
        return BinImages(self, transform)


def load_bin(path: str | os.PathLike, image_size: Sequence[int] | None = None) -> BinSet:
    """Load an InsightFace verification ``.bin`` safely.

    Py2 packs are read like insightface's ``load_bin`` (retry with ``encoding='bytes'`` on ``UnicodeDecodeError``);
    images may be ``bytes``, ``bytearray`` or ``cv2.imencode`` uint8 arrays and are kept encoded. Every image's size
    is read from its header: images of another size are decoded resized to the evaluation size, as InsightFace's
    ``load_bin`` does (a warning says how many), and one of another aspect ratio is refused here.

    Args:
        path: The ``.bin`` file.
        image_size: ``(height, width)`` to evaluate at; None takes the pack's most common image size.

    Raises:
        FileNotFoundError: The file does not exist.
        UnsafeFileError: The pickle names a global outside :data:`ALLOWED_GLOBALS` (nothing was executed).
        BinFormatError: Not a pickle, or not ``(bins, issame_list)`` with ``2 N`` byte strings and ``N`` booleans, or
            an image of another aspect ratio than the evaluation size (the message names the image index).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification .bin not found: {path}")
    images, issame = _validate(path, _load_pickle(path))
    return BinSet(images, issame, path=os.fspath(path), image_size=_pack_image_size(path, images, image_size))


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool] | np.ndarray) -> Path:
    """Write a verification ``.bin`` in insightface's format: ``pickle.dump((bins, issame_list), HIGHEST_PROTOCOL)``.

    Images are stored as given (``bytes``), flags as Python bools, through a temporary file and a rename.

    Raises:
        BinFormatError: ``len(images) != 2 * len(issame)``, an image is empty or not bytes-like, or a flag is not
            a bool / 0 / 1.
    """
    path = Path(path)
    bins, flags = _validate(path, (list(images), issame if isinstance(issame, np.ndarray) else list(issame)))
    return _dump_atomic(path, (bins, [bool(x) for x in flags]))


class VideoBinSet:
    """A loaded video verification pack (YTF): videos as lists of encoded frames, and the flag of each pair.

    Attributes:
        videos: The distinct videos, each a list of encoded frames in frame order.
        pair_videos: ``2 N`` indices into :attr:`videos`; entries ``2i`` and ``2i+1`` form pair ``i``.
        issame: ``N`` booleans.
        path: The file it came from, used in error messages (None when built in memory).
    """

    def __init__(
        self,
        videos: Sequence[Sequence[bytes]],
        pair_videos: Sequence[int] | np.ndarray,
        issame: Sequence[bool] | np.ndarray,
        path: str | None = None,
    ) -> None:
        self.videos = [list(v) for v in videos]
        self.pair_videos = np.asarray(pair_videos, dtype=np.int64)
        self.issame = np.asarray(issame, dtype=bool)
        self.path = path
        if len(self.pair_videos) != 2 * len(self.issame):
            raise BinFormatError(
                f"{path or 'VideoBinSet'}: {len(self.pair_videos)} entries for {len(self.issame)} pairs "
                "(2 videos per pair expected)"
            )

    def __len__(self) -> int:
        return len(self.issame)

    def __repr__(self) -> str:
        frames = sum(len(v) for v in self.videos)
        return f"VideoBinSet({self.path!r}, pairs={len(self)}, videos={len(self.videos)}, frames={frames})"

    def decode(self, video: int, frame: int) -> np.ndarray:
        """Frame ``frame`` of video ``video`` as an ``H×W×3`` uint8 RGB array.

        Raises:
            BinFormatError: The bytes do not decode; the message names the file, the video and the frame.
        """
        return _decode(self.videos[video][frame], f"{self.path or 'VideoBinSet'}: video {video} frame {frame}")


def load_video_bin(path: str | os.PathLike) -> VideoBinSet:
    """Load a video verification pack (``ytf.bin``, see the module doc) through the same restricted unpickler.

    Raises:
        FileNotFoundError: The file does not exist.
        UnsafeFileError: The pickle names a global outside :data:`ALLOWED_GLOBALS` (nothing was executed).
        BinFormatError: Not a pickle, or not ``(bins, issame_list)`` with ``2 N`` non-empty lists of encoded frames
            and ``N`` booleans.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video verification .bin not found: {path}")
    videos, pair_videos, issame = _validate_videos(path, _load_pickle(path))
    return VideoBinSet(videos, pair_videos, issame, path=os.fspath(path))


def write_video_bin(
    path: str | os.PathLike, videos: Sequence[Sequence[bytes]], issame: Sequence[bool] | np.ndarray
) -> Path:
    """Write a video pack: ``pickle.dump((videos, issame_list))``, ``videos[2i]`` and ``videos[2i+1]`` = pair ``i``.

    Entries that are the same object (one video in several pairs) are written once and load as one video.

    Raises:
        BinFormatError: ``len(videos) != 2 * len(issame)``, a video is empty, a frame is empty or not bytes-like, or
            a flag is not a bool / 0 / 1.
    """
    path = Path(path)
    unique, entry_video, flags = _validate_videos(
        path, (list(videos), issame if isinstance(issame, np.ndarray) else list(issame))
    )
    return _dump_atomic(path, ([unique[v] for v in entry_video], [bool(x) for x in flags]))
