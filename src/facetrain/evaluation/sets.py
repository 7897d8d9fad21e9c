"""Evaluation sets: the images (or video frames) one evaluation embeds, plus the protocol lists that index them.

One loader per on-disk format, each a thin layer over the existing readers (``facetrain.data.protocols``,
``facetrain.data.binset``, ``facetrain.evaluation.openset``). A set is plain NumPy data: ``paths`` names every image
in embedding order (a file, or ``<pack>#...`` for a pack image, then decoded by ``decode``), and the lists are row
indices into the embeddings of those images, so a protocol (``facetrain.evaluation.protocols``) computes its report
from the embedding matrix alone. Files are parsed and checked when the set is loaded, before any embedding.

Loader options are named ``eval.<name>.<key>`` in messages (``name`` is the evaluation's metric prefix).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facetrain.data.binset import load_bin, load_video_bin
from facetrain.data.image_files import scan_identity_folders
from facetrain.data.protocols import (
    PairList,
    check_images_exist,
    fold_ids,
    list_frames,
    read_lfw_pairs,
    read_ytf_splits,
    select_frames,
)
from facetrain.evaluation.openset import (
    OpenSetTrial,
    blufr_identity,
    blufr_trials,
    read_blufr_lists,
    split_gallery_probe,
)

__all__ = [
    "EvaluationSet",
    "IdentificationSet",
    "PairSet",
    "VideoPairSet",
    "blufr_lists",
    "identity_folders",
    "insightface_bin",
    "lfw_pairs",
    "ytf_bin",
    "ytf_folders",
]


@dataclass
class EvaluationSet:
    """Images to embed, in order.

    Attributes:
        paths: One name per image, the row order of the embeddings: a file path, or ``<pack>#<i>`` for a pack image.
        decode: Decoder of image ``i`` of a pack (uint8 RGB); None when the images are the files in ``paths``.
        options: Loader options recorded next to the results in ``metrics.json``.
    """

    paths: np.ndarray
    decode: Callable[[int], np.ndarray] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class PairSet(EvaluationSet):
    """Image-pair verification: pair ``i`` compares embedding rows ``left[i]`` and ``right[i]``.

    Attributes:
        pairs: Labels (``issame``) and folds of the pairs.
        left: Row of the first image of each pair.
        right: Row of the second image of each pair.
    """

    pairs: PairList = field(default_factory=lambda: PairList([], [], np.zeros(0, bool), np.zeros(0, int)))
    left: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    right: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


@dataclass
class VideoPairSet(PairSet):
    """Video-pair verification: the rows are the frames of each video in consecutive runs, and ``left``/``right``
    index videos, not rows.

    Attributes:
        frame_counts: Frames (rows) of each video, in row order.
        first_k: The first ``k`` frames were kept per video (FaceNet's protocol), else None.
    """

    frame_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    first_k: int | None = None


@dataclass
class IdentificationSet(EvaluationSet):
    """Open-set identification: identities of the rows and the gallery/probe trials that index them.

    Attributes:
        labels: Identity of each row.
        trials: Gallery / genuine-probe / impostor-probe rows of each trial.
    """

    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    trials: list[OpenSetTrial] = field(default_factory=list)


def _check_frames(name: str, frames_per_video: int | None, first_k: int | None) -> None:
    if frames_per_video is not None and frames_per_video < 1:
        raise ValueError(f"eval.{name}.frames_per_video must be >= 1 or null, got {frames_per_video}")
    if first_k is not None and frames_per_video is not None:
        raise ValueError(
            f"eval.{name}: aggregate=first_k takes the first k={first_k} frames; set frames_per_video=null"
        )


def _check_folds(name: str, key: str, n_folds: int, n: int, path: str | os.PathLike[str]) -> None:
    if not 2 <= n_folds <= n:
        raise ValueError(f"eval.{name}.{key} must be in [2, {n}] for the {n} pairs of {path}, got {n_folds}")


def _frame_options(frames_per_video: int | None, first_k: int | None) -> dict[str, Any]:
    return {} if first_k is not None else {"frames_per_video": frames_per_video if frames_per_video else "all"}


def lfw_pairs(root: str, pairs_file: str, ext: str = "jpg", name: str = "lfw") -> PairSet:
    """LFW View-2 layout: ``root/<Name>/<Name>_<NNNN>.<ext>`` and ``pairs.txt`` (folds: its 10 blocks in file order).

    Each image is embedded once even when it appears in several pairs.

    Raises:
        FileNotFoundError: The pairs file or an image it names is missing (naming the file and line).
    """
    del name  # the readers name the file and line
    root_path = Path(root)
    pairs = read_lfw_pairs(pairs_file, ext=ext)
    check_images_exist(pairs, root_path)
    unique, inverse = np.unique(np.asarray(pairs.left + pairs.right), return_inverse=True)
    n = len(pairs)
    paths = np.asarray([os.path.join(root_path, p) for p in unique])
    return PairSet(paths=paths, pairs=pairs, left=inverse[:n], right=inverse[n:])


def insightface_bin(path: str, n_folds: int = 10, name: str = "bin") -> PairSet:
    """An InsightFace ``.bin`` pack (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin).

    Loaded with the restricted unpickler of :func:`facetrain.data.binset.load_bin`; images ``2i`` and ``2i+1`` form
    pair ``i`` and the folds are consecutive blocks in file order, as in InsightFace's ``verification.py``.
    """
    binset = load_bin(path)
    n = len(binset)
    _check_folds(name, "n_folds", n_folds, n, path)
    pairs = PairList(
        left=[f"{path}#{2 * i}" for i in range(n)],
        right=[f"{path}#{2 * i + 1}" for i in range(n)],
        issame=binset.issame.astype(bool),
        folds=fold_ids(n, n_folds),
    )
    paths = np.asarray([f"{path}#{i}" for i in range(2 * n)])  # names for messages; images come from the pack
    return PairSet(
        paths=paths, decode=binset.decode, pairs=pairs, left=np.arange(0, 2 * n, 2), right=np.arange(1, 2 * n, 2)
    )


def ytf_folders(
    root: str,
    splits_file: str,
    n_splits: int | None = 10,
    frames_per_video: int | None = None,
    first_k: int | None = None,
    name: str = "ytf",
) -> VideoPairSet:
    """YouTube Faces layout: ``root/<Name>/<video>/aligned_detect_<video>.<frame>.jpg`` and ``splits.txt``.

    Args:
        n_splits: Splits the file must have (10 for YTF); None accepts any number (small fixtures).
        frames_per_video: Evenly spaced frames kept per video; None keeps all.
        first_k: Keep the first k frames of each video instead (FaceNet).
    """
    _check_frames(name, frames_per_video, first_k)
    pairs = read_ytf_splits(splits_file, n_splits=n_splits)
    videos, inverse = np.unique(np.asarray(pairs.left + pairs.right), return_inverse=True)
    frames = [list_frames(Path(root) / v, frames_per_video, first_k) for v in videos]
    n = len(pairs)
    return VideoPairSet(
        paths=np.asarray([p for f in frames for p in f]),
        options=_frame_options(frames_per_video, first_k),
        pairs=pairs,
        left=inverse[:n],
        right=inverse[n:],
        frame_counts=np.asarray([len(f) for f in frames]),
        first_k=first_k,
    )


def ytf_bin(
    path: str,
    n_splits: int = 10,
    frames_per_video: int | None = None,
    first_k: int | None = None,
    name: str = "ytf",
) -> VideoPairSet:
    """A video ``.bin`` pack (``ytf.bin`` from ``scripts/pairs_to_bin.py --splits-file``), loaded with the restricted
    unpickler of :func:`facetrain.data.binset.load_video_bin`.

    The folds are consecutive blocks in pair order (how the writer stores the splits); frame selection as in
    :func:`ytf_folders`, so the scores equal those of the frame folders the pack was written from.
    """
    _check_frames(name, frames_per_video, first_k)
    videoset = load_video_bin(path)
    n = len(videoset)
    _check_folds(name, "n_splits", n_splits, n, path)
    left, right = videoset.pair_videos[0::2], videoset.pair_videos[1::2]
    pairs = PairList(
        left=[f"{path}#video{v}" for v in left],
        right=[f"{path}#video{v}" for v in right],
        issame=videoset.issame.astype(bool),
        folds=fold_ids(n, n_splits),
    )
    selected = [select_frames(len(v), frames_per_video, first_k) for v in videoset.videos]
    frames = [(v, int(f)) for v, keep in enumerate(selected) for f in keep]
    return VideoPairSet(
        paths=np.asarray([f"{path}#video{v}/frame{f}" for v, f in frames]),  # names for messages
        decode=lambda i: videoset.decode(*frames[i]),
        options=_frame_options(frames_per_video, first_k),
        pairs=pairs,
        left=left,
        right=right,
        frame_counts=np.asarray([len(keep) for keep in selected]),
        first_k=first_k,
    )


def _check_root(name: str, root: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"eval.{name}.root={str(path)!r} is not a directory")
    return path


def identity_folders(
    root: str, trials: int = 10, seed: int = 0, impostor_fraction: float = 0.5, name: str = "openset"
) -> IdentificationSet:
    """Any identity-folder tree ``root/<identity>/<image>`` with seeded open-set trials: trial ``t`` is
    :func:`facetrain.evaluation.openset.split_gallery_probe` with seed ``seed + t``."""
    path = _check_root(name, root)
    if int(trials) != trials or trials < 1:
        raise ValueError(f"eval.{name}.trials must be a positive integer, got {trials!r}")
    try:
        _, paths, labels = scan_identity_folders(path)
        splits = [
            split_gallery_probe(labels, seed=int(seed) + t, impostor_fraction=float(impostor_fraction))
            for t in range(int(trials))
        ]
    except ValueError as error:
        raise ValueError(f"eval.{name}: {error}") from None
    options = {
        "protocol": "generic",
        "images": len(paths),
        "seed": int(seed),
        "impostor_fraction": float(impostor_fraction),
    }
    return IdentificationSet(paths=np.asarray(paths), options=options, labels=labels, trials=splits)


def blufr_lists(root: str, blufr_dir: str, name: str = "openset") -> IdentificationSet:
    """BLUFR's text lists (``gallery_set.txt``, ``probe_set.txt``, optionally ``test_set.txt``; format in
    :func:`facetrain.evaluation.openset.read_blufr_list`) over LFW images ``root/<Name>/<Name>_<NNNN>.jpg``."""
    path = _check_root(name, root)
    lists = read_blufr_lists(blufr_dir)
    files = lists.files
    identities = [blufr_identity(f) for f in files]
    paths = np.asarray([os.path.join(path, i, f) for i, f in zip(identities, files)])
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(files)} BLUFR images are missing under {path}; first: {missing[0]}"
        )
    return IdentificationSet(
        paths=paths,
        options={"protocol": "blufr", "images": len(paths)},
        labels=np.asarray(identities),
        trials=blufr_trials(lists, files),
    )
