"""Synthetic training-label noise for robustness experiments (``data.label_noise``).

Two kinds, after the face-recognition noise studies summarised in docs/protocols.md §6:

* ``symmetric`` (closed-set label flips, as BoundaryFace ``utils/generate_label_flip.py`` [S35] and the flip half of
  NoiseFace ``code/gen_noise.py`` [S34]): exactly ``round(rate·N)`` training samples, drawn uniformly without
  replacement from all N, get a label drawn uniformly from the C−1 *other* identities. BoundaryFace flips
  ``floor(rate·n_c)`` per class instead; drawing over the whole set gives exactly ``round(rate·N)`` overall and the
  same expected rate per class.
* ``outlier`` (open-set noise, as the outlier half of NoiseFace [S34]): exactly ``round(rate·N)`` samples keep
  their label but show another identity's image. NoiseFace takes the outlier images from MegaFace distractors;
  without a distractor set we take each donor uniformly at random, with replacement, from the training images of
  *other* identities (so identities with more images donate more, and one image can be donor to several samples).
  The victim's own image is no longer shown at its position.

Everything is a pure function of ``(labels, rate, seed)``: same inputs, same noise, on any machine (NumPy's
``default_rng``/PCG64 stream is stable across platforms). ``round`` here is round-half-up: ``floor(rate·N + 0.5)``.

For both kinds the record stores, per corrupted sample, the *true* label (the identity actually in the image) and
the *noisy* label (the one used for training): for ``symmetric`` the image's own label and the flipped label; for
``outlier`` the donor image's label and the kept label. So ``true != noisy`` for every recorded sample, which is
what noise-detection metrics need.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from facetrain.utils.io import atomic_write
from facetrain.utils.rules import Constraint, Interval, OneOf, check_args, check_value

NOISE_KINDS = ("none", "symmetric", "outlier")
MAX_RATE = 0.6  # NoiseFace's highest rate [S34]; beyond it most labels are wrong and the task is no longer defined
#: The fraction of corrupted training labels, in [0, MAX_RATE].
RATE = Interval(0.0, MAX_RATE)


@dataclass(frozen=True)
class LabelNoiseConfig:
    """``data.label_noise``: ``{kind: none|symmetric|outlier, rate: p in [0, 0.6], seed: int >= 0}``."""

    #: Valid values, checked by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "kind": OneOf(NOISE_KINDS),
        "rate": RATE,
        "seed": Interval(0, integer=True),
    }

    kind: str = "none"
    rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_args(self, prefix="data.label_noise")

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | LabelNoiseConfig | None) -> LabelNoiseConfig:
        """Validate the config node (None means no noise); unknown keys are refused by name."""
        if value is None:
            return cls()
        if isinstance(value, LabelNoiseConfig):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"data.label_noise must be a mapping {{kind, rate, seed}}, got {value!r}")
        unknown = sorted(set(value) - {"kind", "rate", "seed"})
        if unknown:
            raise ValueError(
                f"unknown key(s) data.label_noise.{', data.label_noise.'.join(unknown)}; use kind, rate, seed"
            )
        return cls(**{k: value[k] for k in value})

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.rate > 0


@dataclass(frozen=True)
class NoiseRecord:
    """Which samples were corrupted, sorted by index.

    Attributes:
        kind: ``symmetric`` or ``outlier`` (``none`` for an empty record).
        indices: Positions in the training set.
        true_labels: Identity actually shown in the image at each position.
        noisy_labels: Label used for training at each position.
        donor_indices: For ``outlier``, the training-set index of the image shown instead; else None.
    """

    kind: str
    indices: np.ndarray
    true_labels: np.ndarray
    noisy_labels: np.ndarray
    donor_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)


def num_corrupted(n: int, rate: float) -> int:
    """``round(rate·n)``, rounding halves up (Python's ``round`` would round 2.5 to 2)."""
    return int(math.floor(rate * n + 0.5))


def _check_labels(labels: np.ndarray, rate: float) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    check_value("data.label_noise.rate", rate, RATE)
    return labels.astype(np.int64, copy=False)


def _empty(kind: str) -> NoiseRecord:
    e = np.zeros(0, dtype=np.int64)
    return NoiseRecord(kind, e, e, e, e if kind == "outlier" else None)


def symmetric_noise(
    labels: np.ndarray, rate: float, seed: int, num_classes: int | None = None
) -> tuple[np.ndarray, NoiseRecord]:
    """Flip ``round(rate·N)`` labels to a uniformly random other class.

    Args:
        labels: int labels (N,), values in ``[0, num_classes)``.
        rate: Fraction in [0, 0.6].
        seed: Non-negative seed.
        num_classes: Class count C (default ``max(labels) + 1``); new labels are drawn from ``[0, C)`` minus the
            true label, so C must be >= 2 when anything is flipped.

    Returns:
        ``(noisy_labels, record)``; the input array is not modified.
    """
    labels = _check_labels(labels, rate)
    n = labels.size
    c = (int(labels.max()) + 1 if n else 0) if num_classes is None else int(num_classes)
    if n and labels.max() >= c:
        raise ValueError(f"num_classes={c} but labels go up to {labels.max()}")
    k = num_corrupted(n, rate)
    if k == 0:
        return labels.copy(), _empty("symmetric")
    if c < 2:
        raise ValueError(f"symmetric label noise needs at least 2 classes, got {c}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=k, replace=False))
    # An offset uniform in 1..C-1 added modulo C is uniform over exactly the C-1 other classes.
    new = (labels[idx] + rng.integers(1, c, size=k)) % c
    noisy = labels.copy()
    noisy[idx] = new
    return noisy, NoiseRecord("symmetric", idx, labels[idx].copy(), new)


def outlier_noise(labels: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, NoiseRecord]:
    """Replace ``round(rate·N)`` images by images of other identities, keeping the labels.

    Victims are drawn uniformly without replacement; each victim's donor is drawn uniformly, with replacement, from
    all training images whose label differs from the victim's (rejection sampling, then an exact draw from the
    complement for any victim still unmatched after 64 rounds; both are the same uniform distribution).

    Returns:
        ``(image_index, record)``: ``image_index[i]`` is the training-set index of the image to show at position
        ``i`` (``i`` itself unless ``i`` is a victim). Labels are unchanged.
    """
    labels = _check_labels(labels, rate)
    n = labels.size
    k = num_corrupted(n, rate)
    image_index = np.arange(n, dtype=np.int64)
    if k == 0:
        return image_index, _empty("outlier")
    if np.unique(labels).size < 2:
        raise ValueError("outlier label noise needs images of at least 2 identities")
    rng = np.random.default_rng(seed)
    victims = np.sort(rng.choice(n, size=k, replace=False))
    donors = rng.integers(0, n, size=k)
    for _ in range(64):
        same = np.flatnonzero(labels[donors] == labels[victims])
        if same.size == 0:
            break
        donors[same] = rng.integers(0, n, size=same.size)
    for j in np.flatnonzero(labels[donors] == labels[victims]):
        donors[j] = rng.choice(np.flatnonzero(labels != labels[victims[j]]))
    image_index[victims] = donors
    return image_index, NoiseRecord("outlier", victims, labels[donors].copy(), labels[victims].copy(), donors)


def apply_label_noise(
    labels: np.ndarray, config: LabelNoiseConfig, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, NoiseRecord]:
    """Apply ``config`` to training labels.

    Returns:
        ``(labels, image_index, record)``: the training labels to use, the index of the image to show at each
        position, and the record. ``kind: none`` or ``rate: 0`` return the inputs unchanged (identity index).
    """
    labels = _check_labels(labels, config.rate)
    identity = np.arange(labels.size, dtype=np.int64)
    if not config.active:
        return labels.copy(), identity, _empty("none")
    if config.kind == "symmetric":
        noisy, record = symmetric_noise(labels, config.rate, config.seed, num_classes)
        return noisy, identity, record
    image_index, record = outlier_noise(labels, config.rate, config.seed)
    return labels.copy(), image_index, record


def write_noise_csv(path: str | os.PathLike, record: NoiseRecord, paths: Sequence[str] | None = None) -> Path:
    """Write ``label_noise.csv``: ``index,true_label,noisy_label[,donor_index]`` (+ ``path[,donor_path]``).

    ``path`` is the training image originally at ``index``; ``donor_path`` the image shown there instead. Written
    through a temporary file and a rename, so a crash never leaves half a record.
    """
    path = Path(path)
    header = ["index", "true_label", "noisy_label"]
    columns: list[np.ndarray] = [record.indices, record.true_labels, record.noisy_labels]
    if record.donor_indices is not None:
        header.append("donor_index")
        columns.append(record.donor_indices)
    if paths is not None:
        header.append("path")
        # Index one by one: ``paths`` may be a PathTable, whose np.asarray would expand all paths at 4 bytes/char.
        columns.append(np.asarray([paths[int(i)] for i in record.indices]))
        if record.donor_indices is not None:
            header.append("donor_path")
            columns.append(np.asarray([paths[int(i)] for i in record.donor_indices]))
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(zip(*(c.tolist() for c in columns)))
    return path
