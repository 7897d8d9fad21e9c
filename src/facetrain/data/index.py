"""A compact, fork-friendly table of image paths for multi-million-image training sets.

A Python list of 5 million path strings costs ~0.5 GB in the main process, and every DataLoader worker slowly copies
it: reading a list element touches the string object's reference count, which dirties its memory page, so
copy-on-write duplicates the pages a worker reads (pytorch/pytorch#13246). A NumPy ``<U`` array avoids the objects
but stores 4 bytes per character. :class:`PathTable` stores the UTF-8 bytes of all relative paths in one ``uint8``
buffer plus an ``int64`` offset array: ~1 byte per character + 8 bytes per image, no Python objects, so workers only
ever read shared pages. ``scripts/bench_index_memory.py`` measures the three side by side at 5M images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["PathTable"]


class PathTable:
    """Immutable sequence of paths ``root/<relative path>`` backed by two NumPy arrays.

    Args:
        root: Common prefix joined to every relative path ("" for absolute paths).
        data: Concatenated UTF-8 bytes of the relative paths (uint8).
        offsets: ``len + 1`` int64 offsets into ``data``; path ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
    """

    __slots__ = ("data", "offsets", "root")

    def __init__(self, root: str, data: np.ndarray, offsets: np.ndarray) -> None:
        if data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1:
            raise ValueError("PathTable needs uint8 data and a 1-D int64 offsets array with a leading 0")
        if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
            raise ValueError("PathTable offsets must start at 0, end at len(data) and never decrease")
        self.root = str(root)
        self.data = data
        self.offsets = offsets

    @classmethod
    def from_relative(cls, root: str | os.PathLike[str], relative: Iterable[str]) -> PathTable:
        """Builds the table from relative paths, streaming: the strings are encoded one by one, never all held."""
        chunks: list[bytes] = []
        lengths: list[int] = []
        buffered = 0
        pieces: list[np.ndarray] = []
        length_arrays: list[np.ndarray] = []
        for path in relative:
            encoded = path.encode("utf-8")
            chunks.append(encoded)
            lengths.append(len(encoded))
            buffered += 1
            if buffered == 65536:  # flush into arrays so at most 64k small bytes objects exist at once
                pieces.append(np.frombuffer(b"".join(chunks), dtype=np.uint8))
                length_arrays.append(np.asarray(lengths, dtype=np.int64))
                chunks, lengths, buffered = [], [], 0
        pieces.append(np.frombuffer(b"".join(chunks), dtype=np.uint8))
        length_arrays.append(np.asarray(lengths, dtype=np.int64))
        data = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
        offsets = np.zeros(sum(len(a) for a in length_arrays) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(length_arrays), out=offsets[1:])
        return cls(os.fspath(root), np.ascontiguousarray(data), offsets)

    def relative(self, index: int) -> str:
        """The relative path of item ``index``."""
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"PathTable index {index} out of range for {len(self)} paths")
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def __getitem__(self, index: int | np.integer | np.ndarray | slice) -> Any:
        """``table[i]`` is a path; like NumPy, an integer or boolean array (or a slice) selects a new table."""
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        if isinstance(index, np.ndarray | list):
            idx = np.asarray(index)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} paths")
                idx = np.flatnonzero(idx)
            return self.take(idx)
        rel = self.relative(index)
        return os.path.join(self.root, rel) if self.root else rel

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """A NumPy string array of the full paths (for small sets: costs 4 bytes per character)."""
        return np.asarray(list(self), dtype=dtype)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: np.ndarray) -> PathTable:
        """A new table with the given items, in that order (for label-noise donors, exclusions, subsets)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"PathTable index out of range for {len(self)} paths")
        idx = np.where(idx < 0, idx + len(self), idx)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Gather the byte ranges with one vectorised index array (no per-path Python loop).
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return PathTable(self.root, self.data[positions], offsets)

    @property
    def nbytes(self) -> int:
        """Memory held by the two arrays."""
        return int(self.data.nbytes + self.offsets.nbytes)

    def __repr__(self) -> str:
        return f"PathTable(root={self.root!r}, paths={len(self)}, bytes={self.nbytes})"
