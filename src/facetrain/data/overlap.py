"""Removing training identities that overlap the test sets (``data.exclude_identities``).

Training on CASIA-WebFace identities that also appear in LFW breaks the LFW protocol ("Using all images will violate
the training protocol for LFW", SphereFace authors, docs/protocols.md §4.2 [S23]). The named lists ship in
``facetrain/data/lists/``:

* ``sphereface3`` — the 3 ids SphereFace removed (10,575 → 10,572 classes) [S4][S22][S24];
* ``lfw16`` — the 16 ids of happynear/FaceDatasets ``CASIA/webface_lfw_overlap.txt`` [S24].

AM-Softmax's 59-id list (17 LFW + 42 MegaFace, [S31]) is not shipped: the reference gives its size, not its ids.
Any other list can be given as a file: one identity folder name per line, ``#`` starts a comment, blank lines are
ignored. Ids of a list that are absent from the data are reported, not an error: the lists are written for the
full dataset and a subset (or a re-packed copy) legitimately lacks some.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LISTS_DIR = Path(__file__).resolve().parent / "lists"
NAMED_LISTS = {"sphereface3": "sphereface3.txt", "lfw16": "lfw16.txt"}


@dataclass(frozen=True)
class IdentityList:
    """A parsed exclusion list.

    Attributes:
        spec: What the config said (a list name or a path).
        path: The file read.
        identities: The ids, in file order.
    """

    spec: str
    path: Path
    identities: tuple[str, ...]


@dataclass(frozen=True)
class Exclusion:
    """Result of :func:`exclude_identities`.

    Attributes:
        keep: Indices (into the input arrays) of the images kept.
        labels: Their new labels, contiguous ``0 .. len(classes)-1`` in the old order.
        classes: Remaining identity names.
        removed: ``(identity, number of images removed)`` for each listed identity found in the data.
        not_found: Listed identities absent from the data.
    """

    keep: np.ndarray
    labels: np.ndarray
    classes: list[str]
    removed: list[tuple[str, int]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def read_identity_list(path: str | os.PathLike) -> list[str]:
    """Parse an identity list file (one folder name per line, ``#`` comments, blank lines ignored).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A name with whitespace or a path separator, ``.``/``..``, or a duplicate; the message names the
            file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identity list {str(path)!r} does not exist or is not a file")
    names: list[str] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            name = raw.split("#", 1)[0].strip()
            if not name:
                continue
            if any(c.isspace() for c in name) or "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(
                    f"{path}:{lineno}: {name!r} is not an identity folder name "
                    "(one name per line, no spaces or path separators; '#' starts a comment)"
                )
            if name in first_line:
                raise ValueError(
                    f"{path}:{lineno}: identity {name!r} is listed twice (first at line {first_line[name]})"
                )
            first_line[name] = lineno
            names.append(name)
    return names


def load_identity_list(spec: str | os.PathLike) -> IdentityList:
    """Resolve ``data.exclude_identities``: a shipped list name (``sphereface3``, ``lfw16``) or a file path.

    Raises:
        ValueError: Neither a known name nor an existing file; the message lists the names.
    """
    text = os.fspath(spec)
    if text in NAMED_LISTS:
        path = LISTS_DIR / NAMED_LISTS[text]
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(
                f"data.exclude_identities={text!r} is neither a shipped list ({', '.join(sorted(NAMED_LISTS))}) "
                "nor an existing file (one identity folder name per line)"
            )
    return IdentityList(text, path.resolve(), tuple(read_identity_list(path)))


def exclude_identities(classes: Sequence[str], labels: np.ndarray, excluded: Sequence[str]) -> Exclusion:
    """Drop the images of the listed identities and renumber the remaining labels contiguously.

    Args:
        classes: Identity name of each label (``classes[label]``).
        labels: int labels of the images (N,).
        excluded: Identity names to drop.

    Raises:
        ValueError: Every identity would be removed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    position = {name: i for i, name in enumerate(classes)}
    drop_ids = sorted(position[name] for name in set(excluded) if name in position)
    not_found = [name for name in excluded if name not in position]
    if len(drop_ids) == len(classes) and classes:
        raise ValueError(f"data.exclude_identities removes all {len(classes)} identities of the training data")
    counts = np.bincount(labels, minlength=len(classes))
    removed = [(classes[i], int(counts[i])) for i in drop_ids]
    dropped = np.zeros(len(classes), dtype=bool)
    dropped[drop_ids] = True
    keep = np.flatnonzero(~dropped[labels])
    new_label = np.full(len(classes), -1, dtype=np.int64)
    new_label[~dropped] = np.arange(int((~dropped).sum()), dtype=np.int64)
    kept_classes = [name for i, name in enumerate(classes) if not dropped[i]]
    return Exclusion(keep, new_label[labels[keep]], kept_classes, removed, not_found)


def drop_empty_classes(classes: Sequence[str], labels: np.ndarray) -> tuple[list[str], np.ndarray, list[str]]:
    """Renumber labels so that only classes with at least one image remain.

    Returns:
        ``(classes, labels, emptied)``: the remaining names, the new labels, the names of the classes dropped.
    """
    labels = np.asarray(labels, dtype=np.int64)
    present = np.bincount(labels, minlength=len(classes)) > 0
    if present.all():
        return list(classes), labels, []
    new_label = np.full(len(classes), -1, dtype=np.int64)
    new_label[present] = np.arange(int(present.sum()), dtype=np.int64)
    emptied = [name for i, name in enumerate(classes) if not present[i]]
    return [name for i, name in enumerate(classes) if present[i]], new_label[labels], emptied
