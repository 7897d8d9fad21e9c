"""Open-set identification (DIR at FAR), closed-set rank-1 accuracy and the BLUFR protocol.

Pure NumPy (no torch). Embeddings are L2-normalised rows; a score is the cosine (dot product).

Definitions follow BLUFR's official ``OpenSetROC.m`` (Liao, Lei, Yi, Li, IJCB 2014; BLUFR toolkit v1.0,
2014-07-22, by Shengcai Liao; docs/protocols.md §2.4):

* A probe whose identity has no gallery image is an **impostor**; its detection score is its best gallery score.
* For a target FAR the number of false alarms is ``k = round(far · N_imp)`` with MATLAB's ``round`` (halves away
  from zero), and the threshold is the **k-th** highest impostor score. Two special cases, as in the official
  function: ``k = 0`` (``far = 0``) puts the threshold midway between the highest impostor score and the lowest
  genuine score above it (``impScore(1) + sqrt(eps)`` when there is none); ``k = N_imp`` puts it ``sqrt(eps)``
  below the lowest impostor and genuine score, so every probe is accepted.
* A **genuine** probe is detected and identified when its true identity is among the top ``rank`` gallery
  identities **and** its true-identity score is ``>=`` the threshold. DIR is the fraction of genuine probes for
  which that holds. The measured FAR is ``k / N_imp`` (it may exceed the target by up to half a false alarm,
  as in the official function).

Where facetrain differs from ``OpenSetROC.m`` (documented choices):

* A target ``0 < far < 1 / N_imp`` raises :class:`~facetrain.evaluation.verification.UndefinedMetricError` (the
  house rule of TAR@FAR in :mod:`facetrain.evaluation.verification`) instead of silently measuring FAR 0 or
  1 / N_imp; ``far = 0`` itself is the official zero-FAR point above.
* A gallery identity with several images scores by its best image and ranks count identities (the official
  function ranks images; with one image per identity, as in BLUFR, the two agree). Ranks count ties *against* the
  probe: the rank of the true identity is the number of gallery identities scoring at least as high (MATLAB's
  stable sort breaks exact ties by gallery order instead, which makes the result depend on file order).
* Embeddings that are not unit rows are L2-normalised first, so a score is always the cosine.

All scores equal (identical embeddings) raise ``ValueError`` rather than yield a meaningless DIR or rank-1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.evaluation.verification import MetricReport, UndefinedMetricError, check_far

__all__ = [
    "BLUFR_OPEN_SET_FARS",
    "BlufrLists",
    "OpenSetScores",
    "OpenSetTrial",
    "blufr_identity",
    "blufr_trials",
    "dir_at_far",
    "dir_far_curve",
    "dir_from_scores",
    "dir_thresholds",
    "false_alarms",
    "matlab_round",
    "open_set_report",
    "open_set_scores",
    "rank1_accuracy",
    "read_blufr_list",
    "read_blufr_lists",
    "split_gallery_probe",
    "verification_rate",
]

# The open-set FAR grid of BLUFR's demo: [kron(10.^(-4:-1), 1:9), 1] (docs/protocols.md §2.4).
BLUFR_OPEN_SET_FARS: np.ndarray = np.append(np.kron(10.0 ** np.arange(-4, 0), np.arange(1, 10)), 1.0)


@dataclass(frozen=True)
class OpenSetScores:
    """What every open-set metric is computed from.

    Attributes:
        genuine_scores: Per genuine probe (identity in the gallery), the score of its true gallery identity.
        genuine_ranks: Per genuine probe, the 1-based rank of its true identity (ties count against the probe).
        impostor_scores: Per impostor probe (identity not in the gallery), its best gallery score.
    """

    genuine_scores: np.ndarray
    genuine_ranks: np.ndarray
    impostor_scores: np.ndarray


def unit_rows(x: np.ndarray, what: str, dtype: type = np.float64) -> np.ndarray:
    """Finite ``(N, D)`` rows, L2-normalised: every identification score here (and TinyFace's) is a cosine.

    Rows that are already unit (to 1e-6) are left bit for bit as they are, so normalised inputs (what the
    callbacks pass) give exactly the scores they always gave. Empty, non-finite and zero rows are refused.
    """
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what}: row {int(np.argmax(norms[:, 0] == 0))} is zero, which has no direction (cosine)")
    off = np.abs(norms - 1.0) > 1e-6
    return np.where(off, x / norms, x) if np.any(off) else x


def open_set_scores(
    gallery_emb: np.ndarray,
    gallery_ids: Sequence[object] | np.ndarray,
    probe_emb: np.ndarray,
    probe_ids: Sequence[object] | np.ndarray,
) -> OpenSetScores:
    """Score every probe against the gallery and split the probes into genuine and impostor.

    Args:
        gallery_emb: ``(G, D)`` L2-normalised gallery embeddings.
        gallery_ids: Identity of each gallery row (any hashable labels; several rows may share one).
        probe_emb: ``(P, D)`` L2-normalised probe embeddings.
        probe_ids: Identity of each probe row.

    Raises:
        ValueError: Shapes disagree, values are not finite, or every probe-gallery score is equal.
    """
    gallery_emb = unit_rows(gallery_emb, "gallery embeddings")
    probe_emb = unit_rows(probe_emb, "probe embeddings")
    gallery_ids, probe_ids = np.asarray(gallery_ids), np.asarray(probe_ids)
    if gallery_ids.shape != (gallery_emb.shape[0],) or probe_ids.shape != (probe_emb.shape[0],):
        raise ValueError("gallery_ids and probe_ids need one identity per embedding row")
    if gallery_emb.shape[1] != probe_emb.shape[1]:
        raise ValueError(f"embedding widths differ: gallery {gallery_emb.shape[1]}, probes {probe_emb.shape[1]}")
    identities, column = np.unique(gallery_ids, return_inverse=True)
    scores = probe_emb @ gallery_emb.T
    if scores.size > 1 and scores.min() == scores.max():
        raise ValueError(
            f"all {scores.size} probe-gallery scores are equal ({float(scores.flat[0])!r}): the embeddings are "
            "identical (e.g. a collapsed model), so DIR and rank-1 accuracy are undefined"
        )
    if identities.size == gallery_ids.size:  # one image per identity (BLUFR): columns in identity order
        by_identity = np.empty_like(scores)
        by_identity[:, column] = scores
    else:  # best image per identity
        order = np.argsort(column, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(column[order]) != 0])
        by_identity = np.maximum.reduceat(scores[:, order], starts, axis=1)
    slot = np.searchsorted(identities, probe_ids)
    slot_clipped = np.minimum(slot, identities.size - 1)
    genuine = identities[slot_clipped] == probe_ids
    true_scores = by_identity[np.flatnonzero(genuine), slot_clipped[genuine]]
    ranks = np.sum(by_identity[genuine] >= true_scores[:, None], axis=1)
    return OpenSetScores(
        genuine_scores=true_scores,
        genuine_ranks=ranks.astype(np.int64),
        impostor_scores=by_identity[~genuine].max(axis=1),
    )


# MATLAB's sqrt(eps): the margin OpenSetROC.m puts above / below the extreme scores for FAR = 0 / FAR = 1.
_SQRT_EPS = float(np.sqrt(np.finfo(np.float64).eps))


def _allowed_false_alarms(far: float, n_impostors: int) -> int:
    """Impostor pairs allowed above the threshold of :func:`verification_rate` (``floor``, the TAR@FAR rule)."""
    check_far(far, n_impostors, "impostor probes")
    return int(np.floor(far * n_impostors * (1.0 + 1e-9)))  # slack: 0.01 · 300 may land just below 3


def matlab_round(x: float) -> int:
    """MATLAB's ``round`` of a non-negative number: halves go away from zero (NumPy's ``round`` goes to even)."""
    whole = math.floor(x)
    return int(whole) + (1 if x - whole >= 0.5 else 0)  # x - floor(x) is exact for doubles


def false_alarms(far: float, n_impostors: int) -> int:
    """``OpenSetROC.m``'s number of false alarms at ``far``: ``round(far · N_imp)``.

    Raises:
        ValueError: ``far`` is not in [0, 1].
        UndefinedMetricError: ``0 < far < 1 / N_imp``, or there are no impostor probes.
    """
    if far == 0.0:
        if n_impostors < 1:
            raise UndefinedMetricError("FAR=0 is undefined without impostor probes")
        return 0
    check_far(far, n_impostors, "impostor probes")
    return matlab_round(far * n_impostors)


def dir_thresholds(scores: OpenSetScores, ks: np.ndarray) -> np.ndarray:
    """``OpenSetROC.m``'s decision thresholds for ``ks`` false alarms (see the module docstring)."""
    imp = np.sort(scores.impostor_scores)[::-1]
    n_imp = imp.size
    ks = np.asarray(ks, dtype=np.int64)
    thresholds = np.zeros(ks.size)
    inner = (ks > 0) & (ks < n_imp)
    thresholds[inner] = imp[ks[inner] - 1]
    # Decisions use >=, so FAR = 0 needs a threshold strictly above the top impostor score.
    high = scores.genuine_scores[scores.genuine_scores > imp[0]]
    thresholds[ks == 0] = imp[0] + _SQRT_EPS if high.size == 0 else (imp[0] + high.min()) / 2.0
    # FAR = 1 accepts every impostor and every genuine probe.
    lowest = min(imp[-1], scores.genuine_scores.min()) if scores.genuine_scores.size else imp[-1]
    thresholds[ks == n_imp] = lowest - _SQRT_EPS
    return thresholds


def _check_rank(rank: int) -> None:
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")


def _detected(scores: OpenSetScores, rank: int) -> np.ndarray:
    """Ascending scores of the genuine probes whose true identity is within ``rank``."""
    if scores.genuine_scores.size == 0:
        raise ValueError("no genuine probes: no probe identity has a gallery image")
    _check_rank(rank)
    return np.sort(scores.genuine_scores[scores.genuine_ranks <= rank])


def _dirs(scores: OpenSetScores, ks: np.ndarray, rank: int) -> np.ndarray:
    """DIR for each number of false alarms in ``ks``: genuine probes within ``rank`` scoring ``>=`` the threshold."""
    detected = _detected(scores, rank)
    if scores.impostor_scores.size == 0:
        raise UndefinedMetricError("DIR is undefined without impostor probes")
    thresholds = dir_thresholds(scores, ks)
    accepted = detected.size - np.searchsorted(detected, thresholds, side="left")
    return accepted / scores.genuine_scores.size


def dir_from_scores(scores: OpenSetScores, far: float, rank: int = 1) -> float:
    """Detection and identification rate at ``far`` (0 allowed) and ``rank`` (see the module docstring)."""
    _detected(scores, rank)  # the genuine-probe and rank checks come before the FAR's
    k = false_alarms(far, scores.impostor_scores.size)
    return float(_dirs(scores, np.array([k]), rank)[0])


def dir_at_far(
    gallery_emb: np.ndarray,
    gallery_ids: Sequence[object] | np.ndarray,
    probe_emb: np.ndarray,
    probe_ids: Sequence[object] | np.ndarray,
    far: float = 0.01,
    rank: int = 1,
) -> float:
    """BLUFR open-set identification rate: DIR at false-alarm rate ``far`` and rank ``rank`` (``OpenSetROC.m``).

    Probes whose identity is not in the gallery are impostors. The threshold is the ``round(far · N_imp)``-th
    highest impostor probe's best gallery score (special cases at FAR 0 and 1, see the module docstring); a genuine
    probe counts when its true identity is within the top ``rank`` gallery identities and its true-identity score
    is ``>=`` the threshold. Embeddings are L2-normalised if they are not unit rows.

    Raises:
        UndefinedMetricError: ``0 < far < 1 / N_imp`` (or no impostor probes).
        ValueError: No genuine probes, bad inputs, or all scores equal.
    """
    return dir_from_scores(open_set_scores(gallery_emb, gallery_ids, probe_emb, probe_ids), far, rank)


def dir_far_curve(
    gallery_emb: np.ndarray,
    gallery_ids: Sequence[object] | np.ndarray,
    probe_emb: np.ndarray,
    probe_ids: Sequence[object] | np.ndarray,
    fars: Sequence[float] | np.ndarray | None = None,
    rank: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """DIR against FAR.

    Args:
        fars: Target FARs (0, or each >= 1 / N_imp, else :class:`UndefinedMetricError`). None gives the exact
            curve: one point per achievable FAR k / N_imp, k = 1..N_imp.

    Returns:
        ``(fars, dirs)`` as float arrays of one length: the targets (or k / N_imp) and their DIRs.
    """
    scores = open_set_scores(gallery_emb, gallery_ids, probe_emb, probe_ids)
    return _curve(scores, fars, rank)


def _curve(scores: OpenSetScores, fars: Sequence[float] | np.ndarray | None, rank: int) -> tuple[np.ndarray, ...]:
    _detected(scores, rank)
    n_imp = scores.impostor_scores.size
    if n_imp == 0:
        raise UndefinedMetricError("a DIR-FAR curve is undefined without impostor probes")
    if fars is None:
        ks = np.arange(1, n_imp + 1)
        far_arr = ks / n_imp
    else:
        far_arr = np.asarray(fars, dtype=np.float64).ravel()
        ks = np.array([false_alarms(float(f), n_imp) for f in far_arr], dtype=np.int64)
    return far_arr, _dirs(scores, ks, rank)


def rank1_accuracy(
    gallery_emb: np.ndarray,
    gallery_ids: Sequence[object] | np.ndarray,
    probe_emb: np.ndarray,
    probe_ids: Sequence[object] | np.ndarray,
) -> float:
    """Closed-set identification: the fraction of genuine probes whose best gallery identity is the true one.

    Probes whose identity is not in the gallery are ignored (closed-set accuracy is defined on genuine probes).
    """
    scores = open_set_scores(gallery_emb, gallery_ids, probe_emb, probe_ids)
    if scores.genuine_scores.size == 0:
        raise ValueError("no genuine probes: no probe identity has a gallery image")
    return float(np.mean(scores.genuine_ranks == 1))


def verification_rate(
    embeddings: np.ndarray, labels: Sequence[object] | np.ndarray, far: float = 1e-3, block: int = 1024
) -> float:
    """BLUFR verification rate (TAR) at ``far`` over *all* pairs of a set of images.

    BLUFR's verification task compares every pair of test images (≈47 M impostor pairs per trial on LFW), so the
    scores are produced block by block and only the genuine scores and the highest ``floor(far · N_imp) + 1``
    impostor scores are kept. A genuine pair is accepted when its score exceeds the (k+1)-th highest impostor
    score, the rule of :func:`~facetrain.evaluation.verification.tar_at_far`.

    Raises:
        UndefinedMetricError: ``far < 1 / N_imp``.
        ValueError: No genuine or impostor pair, or all scores equal.
    """
    emb = unit_rows(embeddings, "embeddings")
    labels = np.asarray(labels)
    n = emb.shape[0]
    if labels.shape != (n,):
        raise ValueError("labels need one identity per embedding row")
    _, counts = np.unique(labels, return_counts=True)
    n_gen = int(np.sum(counts * (counts - 1) // 2))
    n_imp = n * (n - 1) // 2 - n_gen
    if n_gen == 0:
        raise ValueError("verification rate needs genuine pairs: every identity has a single image")
    keep = _allowed_false_alarms(far, n_imp) + 1
    genuine: list[np.ndarray] = []
    top = np.empty(0)
    lowest, highest = np.inf, -np.inf
    for start in range(0, n - 1, block):
        stop = min(start + block, n)
        upper = np.arange(start, stop)[:, None] < np.arange(start, n)[None, :]
        scores = (emb[start:stop] @ emb[start:].T)[upper]  # each unordered pair once
        same = (labels[start:stop, None] == labels[None, start:])[upper]
        genuine.append(scores[same])
        lowest, highest = min(lowest, scores.min()), max(highest, scores.max())
        top = np.concatenate([top, scores[~same]])
        if top.size > keep:
            top = np.partition(top, top.size - keep)[-keep:]
    if lowest == highest:
        raise ValueError("all pair scores are equal: the embeddings are identical (e.g. a collapsed model)")
    gen = np.concatenate(genuine)
    threshold = -np.inf if keep > n_imp else float(top.min())
    return float(np.mean(gen > threshold))


# --- protocols --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenSetTrial:
    """One gallery/probe split, as row indices into an embedding matrix.

    Attributes:
        gallery: Gallery rows.
        probe: Probe rows (genuine and impostor).
        test: Rows whose all-pairs verification rate is reported; None = gallery ∪ probe (BLUFR's test set).
    """

    gallery: np.ndarray
    probe: np.ndarray
    test: np.ndarray | None = None


def split_gallery_probe(
    labels: Sequence[object] | np.ndarray, seed: int = 0, impostor_fraction: float = 0.5, gallery_per_id: int = 1
) -> OpenSetTrial:
    """A seeded open-set split of any labelled image set (e.g. an identity-folder test tree).

    A fraction ``impostor_fraction`` of the identities is held out of the gallery entirely (all their images are
    impostor probes). Every other identity puts ``gallery_per_id`` random images in the gallery and the rest are
    genuine probes, as BLUFR's gallery of one image per subject.

    Raises:
        ValueError: Fewer than two identities, or a fraction that leaves no gallery or no impostor identity.
    """
    labels = np.asarray(labels)
    if not 0.0 < impostor_fraction < 1.0:
        raise ValueError(f"impostor_fraction must be in (0, 1), got {impostor_fraction!r}")
    if int(gallery_per_id) != gallery_per_id or gallery_per_id < 1:
        raise ValueError(f"gallery_per_id must be a positive integer, got {gallery_per_id!r}")
    identities = np.unique(labels)
    if identities.size < 2:
        raise ValueError(f"an open-set split needs at least 2 identities, got {identities.size}")
    rng = np.random.default_rng(seed)
    n_imp = min(max(int(round(impostor_fraction * identities.size)), 1), identities.size - 1)
    impostors = rng.choice(identities, size=n_imp, replace=False)
    # A random order within each identity: shuffle, then stable-sort by identity.
    perm = rng.permutation(labels.size)
    order = perm[np.argsort(labels[perm], kind="stable")]
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    position = np.arange(labels.size) - np.repeat(starts, np.diff(np.r_[starts, labels.size]))
    to_gallery = ~np.isin(sorted_labels, impostors) & (position < gallery_per_id)
    return OpenSetTrial(gallery=np.sort(order[to_gallery]), probe=np.sort(order[~to_gallery]))


@dataclass(frozen=True)
class BlufrLists:
    """BLUFR image lists per trial (file names such as ``Aaron_Peirsol_0001.jpg``).

    Attributes:
        gallery: Gallery file names of each trial.
        probe: Probe file names of each trial.
        test: Test-set file names of each trial (verification), or None to use gallery ∪ probe.
    """

    gallery: list[list[str]]
    probe: list[list[str]]
    test: list[list[str]] | None = None

    @property
    def files(self) -> list[str]:
        """Every file named by any list, sorted."""
        names = {f for trials in (self.gallery, self.probe, self.test or []) for trial in trials for f in trial}
        return sorted(names)


def read_blufr_list(path: str | os.PathLike[str]) -> list[list[str]]:
    """Read one BLUFR text list (``gallery_set.txt``, ``probe_set.txt`` or ``test_set.txt``).

    BLUFR ships its protocol as ``blufr_lfw_config.mat`` (cells ``galIndex``, ``probIndex``, ``testIndex`` of
    1-based indexes into ``imageList``) and, in ``list/lfw/``, as text (docs/protocols.md §2.4). This reads the text
    form: the first line is the number of trials; then, per trial, a line with the count n followed by n lines
    ``index, filename`` (e.g. ``4, Aaron_Peirsol_0001.jpg``). The file name is what is used; the 1-based index
    into ``image_list.txt`` is only checked to be a positive integer. A ``.mat`` file can be exported to this
    format with one line per image of ``imageList(galIndex{t})`` etc.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The layout is wrong; the message names the file and the 1-based line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BLUFR list not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()

    def integer(lineno: int, token: str, what: str) -> int:
        try:
            value = int(token.strip())
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected {what} (an integer), got {token.strip()!r}") from None
        if value < 1:
            raise ValueError(f"{path}:{lineno}: {what} must be >= 1, got {value}")
        return value

    if not lines:
        raise ValueError(f"{path}: file is empty")
    n_trials = integer(1, lines[0], "the number of trials")
    trials: list[list[str]] = []
    i = 1
    for t in range(n_trials):
        if i >= len(lines):
            raise ValueError(f"{path}:{i + 1}: file ends after {t} of {n_trials} trials")
        count = integer(i + 1, lines[i], f"the image count of trial {t + 1}")
        if i + 1 + count > len(lines):
            raise ValueError(
                f"{path}:{len(lines) + 1}: trial {t + 1} promises {count} images, file ends after {len(lines) - i - 1}"
            )
        names = []
        for lineno in range(i + 2, i + 2 + count):
            fields = lines[lineno - 1].split(",")
            if len(fields) != 2 or not fields[1].strip():
                raise ValueError(f"{path}:{lineno}: expected 'index, filename', got {lines[lineno - 1]!r}")
            integer(lineno, fields[0], "an image index")
            names.append(fields[1].strip())
        trials.append(names)
        i += 1 + count
    if i != len(lines):
        raise ValueError(f"{path}:{i + 1}: unexpected content after the {n_trials} trials: {lines[i]!r}")
    return trials


def read_blufr_lists(directory: str | os.PathLike[str]) -> BlufrLists:
    """Read ``gallery_set.txt``, ``probe_set.txt`` and (if present) ``test_set.txt`` from a BLUFR list folder.

    Raises:
        ValueError: The lists disagree on the number of trials, or a gallery and its probes share an image.
    """
    directory = Path(directory)
    gallery = read_blufr_list(directory / "gallery_set.txt")
    probe = read_blufr_list(directory / "probe_set.txt")
    test_path = directory / "test_set.txt"
    test = read_blufr_list(test_path) if test_path.is_file() else None
    counts = {"gallery_set.txt": len(gallery), "probe_set.txt": len(probe)}
    if test is not None:
        counts["test_set.txt"] = len(test)
    if len(set(counts.values())) != 1:
        raise ValueError(f"{directory}: BLUFR lists disagree on the number of trials: {counts}")
    for t, (g, p) in enumerate(zip(gallery, probe)):
        shared = set(g) & set(p)
        if shared:
            raise ValueError(f"{directory}: trial {t + 1} has {len(shared)} images in both gallery and probes")
    return BlufrLists(gallery=gallery, probe=probe, test=test)


def blufr_identity(filename: str) -> str:
    """Identity of an LFW file name: ``Aaron_Peirsol_0001.jpg`` → ``Aaron_Peirsol``."""
    stem = Path(filename).stem
    name, sep, number = stem.rpartition("_")
    if not sep or not name or not number.isdigit():
        raise ValueError(f"not an LFW file name 'Name_NNNN.ext': {filename!r}")
    return name


def blufr_trials(lists: BlufrLists, files: Sequence[str]) -> list[OpenSetTrial]:
    """Turn BLUFR file-name lists into row indices of ``files`` (the rows of the embedding matrix)."""
    row = {name: i for i, name in enumerate(files)}

    def rows(names: list[str]) -> np.ndarray:
        missing = [n for n in names if n not in row]
        if missing:
            raise ValueError(f"{len(missing)} BLUFR images have no embedding, first: {missing[0]!r}")
        return np.asarray([row[n] for n in names], dtype=np.int64)

    tests = lists.test if lists.test is not None else [None] * len(lists.gallery)
    return [
        OpenSetTrial(gallery=rows(g), probe=rows(p), test=None if t is None else rows(t))
        for g, p, t in zip(lists.gallery, lists.probe, tests)
    ]


def _summarise(report: MetricReport, key: str, per_trial: list[float], error: str | None) -> None:
    """Mean, sample std (MATLAB ``std``, as BLUFR's demo) and BLUFR's headline mean − std over trials."""
    if error is not None:
        for suffix in ("", "_std", "_mean_minus_std"):
            report.set_undefined(key + suffix, error)
        return
    values = np.asarray(per_trial)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    report.set(key, float(values.mean()))
    report.set(key + "_std", std)
    report.set(key + "_mean_minus_std", float(values.mean()) - std)


def _trial_metric(compute: Callable[[], float], per_trial: list[float]) -> str | None:
    """Append ``compute()`` to ``per_trial``; return the reason instead when the metric is undefined."""
    try:
        per_trial.append(float(compute()))
    except UndefinedMetricError as error:
        return str(error)
    return None


def open_set_report(
    embeddings: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    trials: Sequence[OpenSetTrial],
    fars: Sequence[float] = (0.01,),
    rank: int = 1,
    ver_far: float | None = 1e-3,
) -> MetricReport:
    """Run open-set trials and summarise them over trials (BLUFR reports mean − std).

    Args:
        embeddings: ``(N, D)`` L2-normalised rows; trials index into them.
        labels: Identity per row.
        trials: Gallery/probe splits (:func:`split_gallery_probe` with several seeds, or :func:`blufr_trials`).
        fars: FARs for ``dir@far=<far>,rank=<rank>``.
        rank: Rank for DIR.
        ver_far: FAR for the all-pairs verification rate ``vr@far=<far>`` of each trial's test set; None skips it.

    Returns:
        For each metric the mean over trials, ``_std`` and ``_mean_minus_std``: ``dir@far=...,rank=...`` per far,
        ``rank1`` (closed-set, genuine probes), ``vr@far=...``; ``trials`` and the mean ``gallery``,
        ``genuine_probes`` and ``impostor_probes`` counts. Curves ``dir_far_fars``, ``dir_far_mean`` and
        ``dir_far_std``: DIR at BLUFR's open-set FAR grid where every trial can measure it.
    """
    emb = unit_rows(embeddings, "embeddings")
    labels = np.asarray(labels)
    if labels.shape != (emb.shape[0],):
        raise ValueError("labels need one identity per embedding row")
    if not trials:
        raise ValueError("open-set evaluation needs at least one trial")
    _check_rank(rank)
    per_far: dict[float, list[float]] = {float(f): [] for f in fars}
    far_errors: dict[float, str | None] = dict.fromkeys(per_far)
    rank1: list[float] = []
    vr: list[float] = []
    vr_error: str | None = None
    counts = np.zeros(3)
    scored: list[OpenSetScores] = []
    for trial in trials:
        s = open_set_scores(emb[trial.gallery], labels[trial.gallery], emb[trial.probe], labels[trial.probe])
        if s.genuine_scores.size == 0:
            raise ValueError("a trial has no genuine probes: no probe identity has a gallery image")
        scored.append(s)
        counts += (trial.gallery.size, s.genuine_scores.size, s.impostor_scores.size)
        rank1.append(float(np.mean(s.genuine_ranks == 1)))
        for far in per_far:
            error = _trial_metric(lambda s=s, far=far: dir_from_scores(s, far, rank), per_far[far])
            far_errors[far] = far_errors[far] or error
        if ver_far is not None:
            rows = trial.test if trial.test is not None else np.concatenate([trial.gallery, trial.probe])
            error = _trial_metric(lambda rows=rows: verification_rate(emb[rows], labels[rows], ver_far), vr)
            vr_error = vr_error or error

    report = MetricReport()
    for far, values in per_far.items():
        _summarise(report, f"dir@far={far:g},rank={rank}", values, far_errors[far])
    _summarise(report, "rank1", rank1, None)
    if ver_far is not None:
        _summarise(report, f"vr@far={ver_far:g}", vr, vr_error)
    report.set("trials", float(len(trials)))
    for key, value in zip(("gallery", "genuine_probes", "impostor_probes"), counts / len(trials)):
        report.set(key, float(value))

    min_imp = min(s.impostor_scores.size for s in scored)
    grid = BLUFR_OPEN_SET_FARS[BLUFR_OPEN_SET_FARS * min_imp >= 1.0 - 1e-9] if min_imp else np.empty(0)
    if grid.size:
        curves = np.stack([_curve(s, grid, rank)[1] for s in scored])
        report.curves.update(dir_far_fars=grid, dir_far_mean=curves.mean(axis=0), dir_far_std=curves.std(axis=0))
    return report
