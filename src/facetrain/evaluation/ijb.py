"""IJB-B / IJB-C 1:1 verification: template features from face features, pair scores, TAR at FAR.

NumPy (and ``scipy.sparse`` for the pooling; no torch): arrays in, a
:class:`~facetrain.evaluation.verification.MetricReport` out. The 1:N (mixed-media identification) half is
:mod:`facetrain.evaluation.ijb_search`; the file readers are :mod:`facetrain.data.ijb`.

Semantics follow InsightFace's ``recognition/arcface_torch/eval_ijbc.py`` and ``recognition/_evaluation_/ijb/``
(``image2template_feature``, ``verification``, the TAR table; users-and-scale.md §3, insightface.md §1.6):

1. each face feature is the (flip-summed) embedding; **N** (``use_norm_score``) keeps its raw norm, without N it
   is L2-normalised first; **D** (``use_detector_score``) multiplies it by the detector's faceness score;
2. the faces of one media (a still, or the frames of one video) are averaged;
3. the media features of a template are summed, and the sum is L2-normalised;
4. a template pair scores the cosine of its two template features.

The four variants of the papers' tables are the four (N, D) combinations: N1D1 ``keep_norm=True`` with
``faceness``, N1D0 ``keep_norm=True`` without, N0D1 ``keep_norm=False`` with, N0D0 ``keep_norm=False`` without.
InsightFace's defaults (and most published ArcFace / AdaFace numbers) are N1D1 with flip summed (F2).

Two TARs are reported per target FAR:

* ``tar@far=<far>``: InsightFace's number, the TPR of the ROC point whose FPR is *nearest* the target (first one
  on ties), on the ROC of ``sklearn.metrics.roc_curve`` with its default ``drop_intermediate=True``. This is how
  published IJB numbers were made; its FPR may exceed the target.
* ``tar@far=<far>/strict``: the largest TPR whose FPR does not exceed the target
  (:func:`~facetrain.evaluation.verification.tar_at_far`, the rule of every other facetrain set).

A target below 1 / (number of impostor pairs) is stored as undefined with the reason, for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from facetrain.evaluation.verification import (
    MetricReport,
    UndefinedMetricError,
    check_far,
    tar_at_far,
)

__all__ = [
    "IJB_FARS",
    "nearest_far_tar",
    "pair_cosines",
    "roc_points",
    "sklearn_roc",
    "template_features",
    "template_rows",
    "verification",
]

# The FARs of InsightFace's IJB table (eval_ijbc.py: x_labels = [10 ** -6, ..., 10 ** -1]).
IJB_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# Feature columns pooled at a time: bounds the float64 copy of the features to N × _POOL_COLUMNS.
_POOL_COLUMNS = 64
# Entries of one block of the template-by-template score matrix (float64): 2**24 × 8 B = 128 MiB.
_SCORE_BLOCK = 1 << 24


def _ids(values: np.ndarray | Sequence[int], n: int, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{what} needs one entry per feature row ({n}), got shape {values.shape}")
    return values


def template_features(
    features: np.ndarray,
    templates: np.ndarray | Sequence[int],
    medias: np.ndarray | Sequence[int],
    faceness: np.ndarray | Sequence[float] | None = None,
    keep_norm: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool face features into L2-normalised template features (see the module docstring for N and D).

    Vectorised: one sort by (template, media) and one sparse (templates × faces) matrix product over blocks of
    columns, instead of InsightFace's per-template Python loop. Sums are in float64.

    Args:
        features: ``(N, D)`` face features (raw, i.e. not necessarily unit rows).
        templates: Template id of each face.
        medias: Media id of each face (faces of one media are averaged before the medias are summed).
        faceness: Detector faceness score of each face, multiplied in (variant D1); None for D0.
        keep_norm: Keep each face feature's norm (N1); False L2-normalises it first (N0).

    Returns:
        ``(template_ids, template_features)``: the sorted unique template ids and a ``(T, D)`` float64 array of
        unit rows in that order.

    Raises:
        ValueError: Shapes disagree, values are not finite, or a template's pooled feature is zero.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {features.shape}")
    n = features.shape[0]
    templates, medias = _ids(templates, n, "templates"), _ids(medias, n, "medias")
    weight = np.ones(n)
    if not keep_norm:
        norms = np.linalg.norm(features, axis=1)
        if np.any(norms == 0):
            raise ValueError(f"face feature {int(np.argmax(norms == 0))} is zero: it cannot be L2-normalised")
        weight = weight / norms
    if faceness is not None:
        weight = weight * np.asarray(_ids(faceness, n, "faceness"), dtype=np.float64)
    if not np.all(np.isfinite(weight)):
        raise ValueError("faceness scores or feature norms are not finite")
    order = np.lexsort((medias, templates))
    t_sorted, m_sorted = templates[order], medias[order]
    new_template = np.r_[True, t_sorted[1:] != t_sorted[:-1]]
    new_media = new_template | np.r_[True, m_sorted[1:] != m_sorted[:-1]]
    media_size = np.diff(np.r_[np.flatnonzero(new_media), n])
    template_of_face = np.cumsum(new_template) - 1  # sorted faces -> template index
    template_ids = t_sorted[new_template]
    # A template feature is a weighted sum of its faces: each face's weight over its media's size (the media mean),
    # summed over medias. One sparse (templates × faces) matrix applies it: a reduceat over 2-D blocks is ~25×
    # slower. Column blocks bound the float64 copy of the features.
    face_weight = weight[order] / np.repeat(media_size, media_size)
    pool = sp.csr_matrix((face_weight, (template_of_face, order)), shape=(template_ids.size, n))
    pooled = np.empty((template_ids.size, features.shape[1]))
    for col in range(0, features.shape[1], _POOL_COLUMNS):
        pooled[:, col : col + _POOL_COLUMNS] = pool @ features[:, col : col + _POOL_COLUMNS].astype(np.float64)
    if not np.all(np.isfinite(pooled)):
        raise ValueError("features contain NaN or infinite values")
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = template_ids[int(np.argmax(norms[:, 0] == 0))]
        raise ValueError(f"template {bad} pools to a zero feature (zero faceness scores?): cannot be normalised")
    return template_ids, pooled / norms


def template_rows(template_ids: np.ndarray, wanted: np.ndarray, what: str = "pair") -> np.ndarray:
    """Row of each id of ``wanted`` in the sorted ``template_ids``.

    Raises:
        ValueError: An id is unknown; the message names its index in ``wanted`` (e.g. the pair number).
    """
    wanted = np.asarray(wanted)
    if wanted.size and template_ids.size and template_ids[0] >= 0 and template_ids[-1] < 4 * (wanted.size + 1024):
        # Small non-negative ids (IJB's): a lookup table instead of a binary search per entry.
        lut = np.zeros(int(template_ids[-1]) + 1, dtype=np.int64)
        lut[template_ids] = np.arange(template_ids.size)
        rows = lut[np.clip(wanted, 0, lut.size - 1)]
    else:
        rows = np.minimum(np.searchsorted(template_ids, wanted), template_ids.size - 1)
    missing = template_ids[rows] != wanted
    if np.any(missing):
        i = int(np.argmax(missing))
        raise ValueError(
            f"{what} {i} names template {wanted[i].item()!r}, which has no face feature "
            f"({int(missing.sum())} such entries in all)"
        )
    return rows


def pair_cosines(features: np.ndarray, rows1: np.ndarray, rows2: np.ndarray) -> np.ndarray:
    """Cosine of each pair of rows of unit ``features`` (``features[rows1[i]] · features[rows2[i]]``).

    The first templates are cut into blocks, and each block is scored against every second template with one
    matrix product, from which the pair scores are picked: IJB-C's 15.7 M pairs join 3,531 gallery templates to
    19,593 probe templates, so a few BLAS products replace 15.7 M gathered 512-d dot products. A block whose pairs
    are too sparse for a product (under 1/8 of its entries) uses gathered dot products instead. Grouping uses
    counts and a radix sort of the block number, not a sort of the pairs; memory stays bounded by
    ``_SCORE_BLOCK`` entries per block.
    """
    features = np.asarray(features, dtype=np.float64)
    rows1, rows2 = np.asarray(rows1, dtype=np.int64), np.asarray(rows2, dtype=np.int64)
    scores = np.empty(rows1.size)
    if rows1.size == 0:
        return scores
    n_rows = features.shape[0]
    used1 = np.flatnonzero(np.bincount(rows1, minlength=n_rows))
    used2 = np.flatnonzero(np.bincount(rows2, minlength=n_rows))
    pos1, pos2 = np.zeros(n_rows, np.int64), np.zeros(n_rows, np.int64)
    pos1[used1], pos2[used2] = np.arange(used1.size), np.arange(used2.size)
    per_block = max(1, _SCORE_BLOCK // used2.size)
    left = pos1[rows1]
    block_of = left // per_block
    n_blocks = int(block_of[-1] if block_of.size == 1 else block_of.max()) + 1
    small = np.uint8 if n_blocks <= 256 else np.uint16 if n_blocks <= 65536 else np.int64
    order = np.argsort(block_of.astype(small), kind="stable")  # radix sort for 8/16-bit keys
    bounds = np.r_[0, np.cumsum(np.bincount(block_of, minlength=n_blocks))]
    right_features = features[used2]
    for b in range(n_blocks):
        idx = order[bounds[b] : bounds[b + 1]]
        firsts = used1[b * per_block : (b + 1) * per_block]
        if firsts.size * used2.size <= 8 * idx.size:  # dense enough: a product wastes < 8 dot products per pair
            block = features[firsts] @ right_features.T
            scores[idx] = block[left[idx] - b * per_block, pos2[rows2[idx]]]
        else:
            for s in range(0, idx.size, 1 << 16):
                part = idx[s : s + (1 << 16)]
                scores[part] = np.einsum("ij,ij->i", features[rows1[part]], features[rows2[part]])
    return scores


def roc_points(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC of :func:`~facetrain.evaluation.verification.roc_curve_points` (same arrays, bit for bit),
    without its stable argsort of all pairs: the scores alone are sorted (a value sort is several times faster
    than an argsort of 15.7 M pairs) and the true accepts at each distinct score come from a binary search among
    the few genuine scores.

    Raises:
        ValueError: Non-finite scores, a class of pairs missing, or all scores equal (e.g. a collapsed model).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} pair scores are NaN or infinite")
    genuine = np.sort(scores[issame])
    n_pos, n_neg = genuine.size, scores.size - genuine.size
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both genuine and impostor pairs, got {n_pos} genuine and {n_neg} impostor")
    desc = np.sort(scores)[::-1]
    if desc[0] == desc[-1]:
        raise ValueError(f"all {scores.size} pair scores are equal: identical template features (collapsed model?)")
    ends = np.append(np.flatnonzero(np.diff(desc)), desc.size - 1)  # last index of every run of equal scores
    values = desc[ends]
    tps = n_pos - np.searchsorted(genuine, values, side="left")  # genuine scores >= each value
    fps = ends + 1 - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, values]


def sklearn_roc(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, n_pos: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC exactly as ``sklearn.metrics.roc_curve(labels, scores)`` returns it (``drop_intermediate=True``).

    Takes the exact ROC of :func:`roc_points` (one point per distinct
    score, after its leading (0, 0)) and applies sklearn's rule: keep the first and last points and every point
    where the second difference of the FP or TP counts is non-zero (the corners); the inner points of straight
    vertical or horizontal runs are dropped. This matters for InsightFace's "nearest FPR" TAR, which picks among
    the kept points only.
    """
    fps, tps = np.rint(fpr[1:] * n_neg), np.rint(tpr[1:] * n_pos)  # the integer counts behind the rates
    thr = thresholds[1:]
    if fps.size > 2:
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[thresholds[0], thr]


def nearest_far_tar(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """InsightFace's TAR at ``far``: the TPR of the first ROC point minimising ``|fpr - far|``."""
    return float(tpr[int(np.argmin(np.abs(fpr - far)))])


def verification(
    template_ids: np.ndarray,
    template_features: np.ndarray,
    pair_t1: np.ndarray | Sequence[int],
    pair_t2: np.ndarray | Sequence[int],
    labels: np.ndarray | Sequence[int],
    fars: Sequence[float] = IJB_FARS,
) -> MetricReport:
    """IJB 1:1 verification of template pairs.

    Args:
        template_ids: Sorted unique template ids (from :func:`template_features`).
        template_features: ``(T, D)`` unit template features in that order.
        pair_t1: First template of each pair.
        pair_t2: Second template of each pair.
        labels: 1 for a genuine (same subject) pair, 0 for an impostor pair.
        fars: Target false-accept rates.

    Returns:
        Values ``tar@far=<far>`` (InsightFace, nearest FPR), ``tar@far=<far>/strict`` (FPR <= far), ``auc``,
        ``pairs``, ``genuine_pairs``; curves ``fpr``, ``tpr``, ``thresholds`` (the exact ROC, one point per
        distinct score, for plots and CSV) and ``scores`` (one per pair, in file order).

    Raises:
        ValueError: A pair names an unknown template (the message gives the pair index), shapes disagree, labels
            are not 0/1, or a class of pairs is missing.
    """
    template_ids = np.asarray(template_ids)
    feats = np.asarray(template_features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] != template_ids.size:
        raise ValueError(f"template_features must be ({template_ids.size}, D), got shape {feats.shape}")
    if template_ids.size > 1 and np.any(template_ids[1:] <= template_ids[:-1]):
        raise ValueError("template_ids must be sorted and unique (as template_features returns them)")
    t1, t2, labels = np.asarray(pair_t1), np.asarray(pair_t2), np.asarray(labels)
    if not t1.shape == t2.shape == labels.shape or t1.ndim != 1:
        raise ValueError(f"pair_t1, pair_t2 and labels differ in shape: {t1.shape}, {t2.shape}, {labels.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"pair {int(np.argmax((labels != 0) & (labels != 1)))} has a label other than 0 or 1")
    scores = pair_cosines(feats, template_rows(template_ids, t1), template_rows(template_ids, t2))
    issame = labels.astype(bool)
    fpr, tpr, thr = roc_points(scores, issame)
    n_imp = int((~issame).sum())
    sk_fpr, sk_tpr, _ = sklearn_roc(fpr, tpr, thr, issame.size - n_imp, n_imp)
    report = MetricReport(curves={"fpr": fpr, "tpr": tpr, "thresholds": thr, "scores": scores})
    for far in fars:
        key = f"tar@far={far:g}"  # the key format of facetrain.evaluation.verification
        try:
            check_far(far, n_imp)
        except UndefinedMetricError as error:
            report.set_undefined(key, str(error))
            report.set_undefined(f"{key}/strict", str(error))
            continue
        report.set(key, nearest_far_tar(sk_fpr, sk_tpr, far))
        report.set(f"{key}/strict", tar_at_far(fpr, tpr, far, n_impostors=n_imp))
    report.set("auc", float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0))
    report.set("pairs", float(issame.size))
    report.set("genuine_pairs", float(issame.sum()))
    return report
