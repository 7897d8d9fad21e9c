"""Embeddings files: an evaluation's embeddings as ``<name>.npy`` with the image order in ``<name>.txt``.

The evaluation callback (:class:`facetrain.callbacks.evaluation.Evaluation`) and ``evaluate.py`` write them;
``evaluate.py embeddings_dir=...`` reads them back to recompute the metrics without a model, after checking that the
stored order is the configured set's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facetrain.data.protocols import read_text_lines
from facetrain.utils.io import atomic_write

__all__ = ["read_embeddings", "write_embeddings"]


def write_embeddings(directory: str | os.PathLike[str], name: str, embeddings: np.ndarray, paths: np.ndarray) -> Path:
    """Write ``<directory>/<name>.npy`` (the rows, as embedded) and ``<name>.txt`` (one image name per row).

    Returns:
        The ``.npy`` path.
    """
    directory = Path(directory)
    with atomic_write(directory / f"{name}.txt", "w", encoding="utf-8") as f:
        f.write("".join(f"{p}\n" for p in paths))
    with atomic_write(directory / f"{name}.npy", "wb") as f:
        np.save(f, np.asarray(embeddings), allow_pickle=False)
    return directory / f"{name}.npy"


def read_embeddings(directory: str | os.PathLike[str], name: str, paths: np.ndarray) -> np.ndarray:
    """The embeddings :func:`write_embeddings` wrote for ``name``, checked against the set's image order.

    Raises:
        FileNotFoundError: ``<name>.npy`` or ``<name>.txt`` is missing.
        ValueError: The stored order is not ``paths`` (naming the first line that differs), or the row count is off.
    """
    directory = Path(directory)
    npy, txt = directory / f"{name}.npy", directory / f"{name}.txt"
    for path in (npy, txt):
        if not path.is_file():
            raise FileNotFoundError(f"embeddings_dir: {path} is missing (written by an evaluation of eval.{name})")
    stored = read_text_lines(txt, "embedding order file")
    for line, (got, expected) in enumerate(zip(stored, paths), start=1):
        if got != str(expected):
            raise ValueError(f"{txt}, line {line}: image {got!r}, but eval.{name} lists {str(expected)!r} there")
    if len(stored) != len(paths):
        raise ValueError(f"{txt}: {len(stored)} images, but eval.{name} has {len(paths)}")
    embeddings = np.load(npy, allow_pickle=False)
    if embeddings.ndim != 2 or len(embeddings) != len(paths):
        raise ValueError(f"{npy}: shape {embeddings.shape}, expected ({len(paths)}, D) for the images of {txt}")
    return embeddings
