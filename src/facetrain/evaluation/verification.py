"""Pair-verification metrics: k-fold accuracy, ROC, TAR@FAR, AUC and EER, and the report that carries them.

Pure NumPy (no torch), so every number here can be checked against hand-computed arrays.

The k-fold protocol is LFW's View 2 (Huang et al., UMass TR 07-49; docs/protocols.md §2.3): the pairs are split into
``n_folds`` consecutive blocks in file order, the threshold is chosen on the other ``n_folds - 1`` folds and the
accuracy is measured on the held-out fold. By default the threshold is *exact*: every cut between two distinct
training scores is considered, so no grid can miss the optimum (the cam-softmax reference code used a 50-point
grid, InsightFace a 0.01 grid on squared distances). The grid mode reproduces InsightFace's ``calculate_roc``
(insightface.md §2) choice for choice, but counts all thresholds at once from one histogram instead of looping.

Metrics the data cannot measure are not silently replaced by a number: a false-accept rate below
1 / (number of impostor pairs) has no operating point, so the low-level functions raise
:class:`UndefinedMetricError` and :class:`MetricReport` stores ``None`` with the reason. ``MetricReport.scalars``
leaves such metrics out of the scalar log (TensorBoard cannot plot a NaN usefully) and ``MetricReport.to_json``
writes the string ``"undefined"`` plus the reason into ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facetrain.data.folds import fold_ids  # re-exported (NumPy only: this module imports no torch)

__all__ = [
    "DEFAULT_FARS",
    "SCORES",
    "UNDEFINED",
    "FoldScorer",
    "MetricReport",
    "UndefinedMetricError",
    "accuracy_at",
    "best_threshold",
    "check_far",
    "equal_error_rate",
    "fold_ids",
    "greater_is_same_for",
    "kfold_accuracy",
    "mean_subtracted_scorer",
    "pair_scores",
    "roc_curve_points",
    "roc_metrics",
    "tar_at_far",
    "threshold_at_far",
    "threshold_grid",
    "verification_report",
]

# TAR is reported at these false-accept rates unless a config says otherwise (eval.<set>.fars).
DEFAULT_FARS: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
# What metrics.json holds for a metric the data cannot measure.
UNDEFINED = "undefined"
# Pair scores: cosine similarity (same when high) or squared L2 distance of unit vectors (same when low, InsightFace).
SCORES: tuple[str, ...] = ("cosine", "l2")

# Maps a boolean mask of training pairs to the scores of *all* pairs, computed with statistics fitted on those
# training pairs only (mean subtraction, PCA, ...).
FoldScorer = Callable[[np.ndarray], np.ndarray]


class UndefinedMetricError(ValueError):
    """The data cannot measure the metric (e.g. a FAR below 1 / number of impostors); the message says why."""


@dataclass
class MetricReport:
    """Scalar results of one evaluation, the options that produced them and the curves behind them.

    Attributes:
        values: Metric name → value; None marks a metric the data cannot measure.
        reasons: Metric name → why it is None.
        options: Evaluation options (flip fusion, score, aggregation, ...) recorded next to the results.
        curves: Arrays for figures and CSV files (``fpr``, ``tpr``, ``thresholds``, ``scores``, ...); never logged
            as scalars.
    """

    values: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        if key in self.curves:
            return self.curves[key]
        raise KeyError(f"{key!r} is neither a value nor a curve of this report: {sorted(self.values)}")

    def __contains__(self, key: object) -> bool:
        return key in self.values or key in self.curves

    def set(self, key: str, value: float | None, reason: str | None = None) -> None:
        """Store a value, or None with the ``reason`` it could not be measured."""
        if value is None:
            if not reason:
                raise ValueError(f"undefined metric {key!r} needs a reason")
            self.reasons[key] = reason
        else:
            self.reasons.pop(key, None)
            value = float(value)
        self.values[key] = value

    def set_undefined(self, key: str, reason: str) -> None:
        """Mark ``key`` as not measurable on this data."""
        self.set(key, None, reason)

    def update(self, other: MetricReport) -> None:
        """Merge another report into this one (its entries win)."""
        self.values.update(other.values)
        for key in other.values:
            self.reasons.pop(key, None)
        self.reasons.update(other.reasons)
        self.options.update(other.options)
        self.curves.update(other.curves)

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """The defined values as floats, for scalar loggers (undefined metrics are left out, never NaN)."""
        return {f"{prefix}{k}": float(v) for k, v in self.values.items() if v is not None}

    def to_json(self, prefix: str = "") -> dict[str, Any]:
        """Flat JSON-ready results: values (``"undefined"`` where None), ``<key>_reason`` entries and the options."""
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            out[f"{prefix}{key}"] = UNDEFINED if value is None else float(value)
        for key, reason in self.reasons.items():
            out[f"{prefix}{key}_reason"] = reason
        for key, option in self.options.items():
            out[f"{prefix}{key}"] = option
        return out


# --- inputs -----------------------------------------------------------------------------------------------------------
def _check_scores(scores: np.ndarray, what: str = "scores") -> np.ndarray:
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} of {scores.size} {what} are NaN or infinite")
    # One distinct score means one distinct embedding (e.g. a collapsed model): every threshold predicts a single
    # class, and the balanced-set accuracy of 0.5 or AUC of 0.5 it would yield looks like a result but is none.
    if scores.size > 1 and scores.min() == scores.max():
        raise ValueError(
            f"all {scores.size} {what} are equal ({float(scores[0])!r}): the embeddings do not separate any pair "
            "(identical embeddings, e.g. a collapsed model), so accuracy, ROC and EER are undefined"
        )
    return scores


def _as_arrays(
    scores: Sequence[float] | np.ndarray, issame: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    issame = np.asarray(issame).astype(bool).ravel()
    if scores.shape != issame.shape:
        raise ValueError(f"scores and issame differ in length: {scores.size} vs {issame.size}")
    if scores.size == 0:
        raise ValueError("no pairs to evaluate")
    return _check_scores(scores), issame


def check_far(far: float, n_impostors: int, what: str = "impostor pairs") -> None:
    """Raise unless ``far`` is a false-accept rate that ``n_impostors`` impostor comparisons can measure.

    The smallest non-zero FAR a set can show is 1 / n_impostors; a target below it has no operating point (TAR at
    "FAR = 0" would be reported for a far smaller FAR than the set can resolve).

    Raises:
        ValueError: ``far`` is not in (0, 1].
        UndefinedMetricError: ``far < 1 / n_impostors`` (or there are no impostors).
    """
    if not 0.0 < far <= 1.0:
        raise ValueError(f"FAR must be in (0, 1], got {far!r}")
    if n_impostors < 1:
        raise UndefinedMetricError(f"FAR={far:g} is undefined without {what}")
    # Relative slack: far = k / n written as a decimal may land one ulp below k / n.
    if far * n_impostors < 1.0 - 1e-9:
        raise UndefinedMetricError(
            f"FAR={far:g} is below 1/{n_impostors} = {1.0 / n_impostors:.3g}, the smallest non-zero false-accept "
            f"rate {n_impostors} {what} can measure"
        )


# --- pair scores ------------------------------------------------------------------------------------------------------
def greater_is_same_for(score: str) -> bool:
    """True for similarities (``cosine``), False for distances (``l2``)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")
    return score == "cosine"


def pair_scores(left: np.ndarray, right: np.ndarray, score: str = "cosine") -> np.ndarray:
    """Score of each pair of (already L2-normalised) embedding rows.

    Args:
        left: ``(N, D)`` first embedding of each pair.
        right: ``(N, D)`` second embedding of each pair.
        score: ``cosine`` (dot product of unit vectors) or ``l2``: the squared Euclidean distance
            ``sum((l - r) ** 2)`` = 2 - 2 cos, computed the way InsightFace's ``evaluate`` does so its thresholds
            apply bit for bit.
    """
    greater_is_same_for(score)
    left, right = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    if left.shape != right.shape or left.ndim != 2:
        raise ValueError(f"left and right must be (N, D) arrays of one shape, got {left.shape} and {right.shape}")
    if score == "cosine":
        return np.sum(left * right, axis=1)
    return np.sum(np.square(np.subtract(left, right)), axis=1)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def mean_subtracted_scorer(left: np.ndarray, right: np.ndarray, score: str = "cosine") -> FoldScorer:
    """Scores with the training-fold mean embedding subtracted (SphereFace's ``evaluation.m``, docs/protocols.md §2.3).

    For a fold, the mean ``mu`` of the training pairs' embeddings (both sides, each pair occurrence counted, as in
    SphereFace) is subtracted from every embedding, the rows are L2-normalised again and the pairs scored. Fitting
    ``mu`` on the training folds only keeps the held-out fold unseen.

    Returns:
        A :data:`FoldScorer`: boolean mask of training pairs → scores of all pairs.
    """
    left, right = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    greater_is_same_for(score)

    def scorer(train: np.ndarray) -> np.ndarray:
        if not np.any(train):
            raise ValueError("mean subtraction needs at least one training pair")
        mu = np.concatenate([left[train], right[train]]).mean(axis=0)
        return pair_scores(_l2_normalize(left - mu), _l2_normalize(right - mu), score)

    return scorer


# --- k-fold accuracy --------------------------------------------------------------------------------------------------
def accuracy_at(scores: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    """Accuracy of the rule "same when score > threshold"."""
    return float(np.mean((scores > threshold) == issame))


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """Threshold that maximises the accuracy of "same when score > threshold", searched exactly.

    Candidates are the midpoints between consecutive distinct sorted scores, plus one below the minimum and one
    above the maximum. Accuracy for all cuts comes from cumulative counts, O(n log n). Ties between cuts go to the
    lowest threshold.
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], issame[order]
    values, first = np.unique(s, return_index=True)
    neg_before = np.concatenate([[0], np.cumsum(~y)])  # negatives among sorted indices < i
    pos_before = np.concatenate([[0], np.cumsum(y)])
    # Cutting just below values[j] predicts "same" for every sorted index >= cuts[j]; the last cut predicts none.
    cuts = np.append(first, s.size)
    correct = neg_before[cuts] + (pos_before[-1] - pos_before[cuts])
    j = int(np.argmax(correct))
    if j == 0:
        return float(values[0] - 1.0)
    if j == len(values):
        return float(values[-1] + 1.0)
    return float((values[j - 1] + values[j]) / 2.0)


def threshold_grid(spec: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    """A threshold grid from ``[start, stop, step]`` (``np.arange``; ``[0, 4, 0.01]`` is InsightFace's), or None."""
    if spec is None:
        return None
    values = [float(v) for v in spec]
    if len(values) != 3 or not all(np.isfinite(values)) or values[2] <= 0 or values[1] <= values[0]:
        raise ValueError(f"threshold grid must be [start, stop, step] with start < stop and step > 0, got {spec!r}")
    return np.arange(*values)


def _grid_correct(
    signed: np.ndarray, issame: np.ndarray, group: np.ndarray, n_groups: int, grid: np.ndarray
) -> np.ndarray:
    """Correct predictions of "same when signed > t" for every grid threshold t and group: ``(n_groups, T)`` ints.

    One ``searchsorted`` places every score among the sorted thresholds, one ``bincount`` histograms those positions
    per (group, label), and cumulative sums turn them into counts for all thresholds: O(n log T + groups·T) instead
    of InsightFace's T passes over the data. Counts are integers, so the argmax over them equals the argmax over
    ``(tp + tn) / n`` that a loop computes (the same integers divided by the same n).
    """
    order = np.argsort(grid, kind="stable")
    n_t = grid.size
    # Number of thresholds strictly below each score: the pair is "same" exactly for those sorted thresholds.
    below = np.searchsorted(grid[order], signed, side="left")
    flat = (group * 2 + issame) * (n_t + 1) + below
    hist = np.bincount(flat, minlength=n_groups * 2 * (n_t + 1)).reshape(n_groups, 2, n_t + 1)
    neg_correct = np.cumsum(hist[:, 0, :n_t], axis=1)  # negatives with below <= j are predicted "not same"
    pos_correct = hist[:, 1, :].sum(axis=1, keepdims=True) - np.cumsum(hist[:, 1, :n_t], axis=1)
    correct = np.empty((n_groups, n_t), dtype=np.int64)
    correct[:, order] = neg_correct + pos_correct  # back to the caller's grid order, so argmax ties match a loop
    return correct


def kfold_accuracy(
    scores: Sequence[float] | np.ndarray | FoldScorer,
    issame: Sequence[bool] | np.ndarray,
    n_folds: int = 10,
    thresholds: Sequence[float] | np.ndarray | None = None,
    greater_is_same: bool = True,
    folds: Sequence[int] | np.ndarray | None = None,
) -> dict[str, Any]:
    """k-fold verification accuracy with the threshold chosen on the other folds (LFW View 2 protocol).

    Args:
        scores: One similarity (or distance, see ``greater_is_same``) per pair, in file order; or a
            :data:`FoldScorer` when the scores depend on statistics fitted on the training folds (mean
            subtraction): it is called once per fold with the mask of training pairs.
        issame: True where the pair shows one identity.
        n_folds: Number of consecutive folds in file order (10 for LFW and YTF).
        thresholds: None for the exact search over all cuts; a grid to choose from instead (InsightFace's
            ``calculate_roc``: first best grid threshold, "same when distance < t" for distances).
        greater_is_same: True for similarities (same when score > t); False for distances (same when score < t).
        folds: Explicit fold index per pair (e.g. YTF split numbers); overrides ``n_folds``.

    Returns:
        ``accuracy`` (mean over folds), ``accuracy_std`` (population std, as InsightFace and numpy report),
        ``accuracy_sem`` (sample std / sqrt(k), the LFW "standard error"), ``fold_accuracies`` and ``thresholds``
        (one per fold, in the units of ``scores``). With a :data:`FoldScorer` also ``scores``: each pair scored by
        the fit of the folds it was held out from (out-of-fold scores, for the ROC).

    Raises:
        ValueError: Lengths differ, NaN/infinite scores, all scores equal, or ``n_folds`` impossible.
    """
    fitted = callable(scores)
    if fitted:
        issame = np.asarray(issame).astype(bool).ravel()
        if issame.size == 0:
            raise ValueError("no pairs to evaluate")
        signed_all = None
    else:
        fixed, issame = _as_arrays(scores, issame)  # type: ignore[arg-type]
    n = issame.size
    fold_of = fold_ids(n, n_folds) if folds is None else np.asarray(folds).ravel()
    if fold_of.shape != issame.shape:
        raise ValueError(f"folds has {fold_of.size} entries for {n} pairs")
    labels, group = np.unique(fold_of, return_inverse=True)
    if labels.size < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {labels.size}")
    sign = 1.0 if greater_is_same else -1.0
    grid = None if thresholds is None else sign * np.asarray(thresholds, dtype=np.float64).ravel()
    if grid is not None and (grid.size == 0 or not np.all(np.isfinite(grid))):
        raise ValueError("thresholds must be a non-empty grid of finite values")
    if not fitted:
        signed_all = sign * fixed
    if not fitted and grid is not None:
        # All folds at once: a fold's training counts are the total minus its own.
        per_fold = _grid_correct(signed_all, issame, group, labels.size, grid)
        best = np.argmax(per_fold.sum(axis=0, keepdims=True) - per_fold, axis=1)
    oof = np.empty(n) if fitted else None
    accs, chosen = [], []
    for k in range(labels.size):
        test = group == k
        train = ~test
        if fitted:
            fold_scores = _check_scores(np.asarray(scores(train), dtype=np.float64).ravel(), "fold scores")
            if fold_scores.shape != issame.shape:
                raise ValueError(f"the fold scorer returned {fold_scores.size} scores for {n} pairs")
            oof[test] = fold_scores[test]
            signed = sign * fold_scores
        else:
            signed = signed_all
        if grid is None:
            t = best_threshold(signed[train], issame[train])
        elif fitted:
            zeros = np.zeros(int(train.sum()), dtype=np.int64)
            t = grid[int(np.argmax(_grid_correct(signed[train], issame[train], zeros, 1, grid)[0]))]
        else:
            t = grid[best[k]]
        accs.append(accuracy_at(signed[test], issame[test], float(t)))
        chosen.append(sign * float(t))
    accs_arr = np.asarray(accs)
    result: dict[str, Any] = {
        "accuracy": float(accs_arr.mean()),
        "accuracy_std": float(accs_arr.std()),
        "accuracy_sem": float(accs_arr.std(ddof=1) / np.sqrt(len(accs))),
        "fold_accuracies": [float(a) for a in accs],
        "thresholds": [float(t) for t in chosen],
    }
    if fitted:
        result["scores"] = _check_scores(oof, "out-of-fold scores")
    return result


# --- ROC --------------------------------------------------------------------------------------------------------------
def roc_curve_points(
    scores: Sequence[float] | np.ndarray, issame: Sequence[bool] | np.ndarray, greater_is_same: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC: one point per distinct score, from one sort and cumulative counts.

    Returns:
        ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf (-inf for distances). Point i accepts
        every pair whose score is ``>= thresholds[i]`` (``<=`` for distances).
    """
    scores, issame = _as_arrays(scores, issame)
    n_pos = int(issame.sum())
    n_neg = issame.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both same and different pairs, got {n_pos} same and {n_neg} different")
    sign = 1.0 if greater_is_same else -1.0
    order = np.argsort(-sign * scores, kind="stable")
    desc = sign * scores[order]
    ends = np.append(np.flatnonzero(np.diff(desc)), desc.size - 1)  # last index of every run of equal scores
    tps = np.cumsum(issame[order])[ends]
    fps = ends + 1 - tps
    fpr = np.concatenate([[0.0], fps / n_neg])
    tpr = np.concatenate([[0.0], tps / n_pos])
    thr = sign * np.concatenate([[np.inf], desc[ends]])
    return fpr, tpr, thr


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float, n_impostors: int | None = None) -> float:
    """Highest true-accept rate whose false-accept rate does not exceed ``far``.

    Args:
        n_impostors: Number of impostor pairs behind the curve. When given, a ``far`` below ``1 / n_impostors``
            raises :class:`UndefinedMetricError`; without it such a ``far`` gives the TAR at the lowest measured FAR
            (0 when no point qualifies).
    """
    if n_impostors is not None:
        check_far(far, n_impostors)
    ok = fpr <= far
    return float(tpr[ok].max()) if np.any(ok) else 0.0


def threshold_at_far(fpr: np.ndarray, thresholds: np.ndarray, far: float, n_impostors: int | None = None) -> float:
    """The most accepting ROC threshold whose false-accept rate does not exceed ``far`` (the operating point of
    :func:`tar_at_far`), for deployment at a chosen FAR.

    Args:
        fpr: False-accept rates of :func:`roc_curve_points`.
        thresholds: Its thresholds (a pair is accepted when its score is ``>=`` the threshold, ``<=`` for distances).
        far: Target false-accept rate.
        n_impostors: As in :func:`tar_at_far`: a ``far`` below ``1 / n_impostors`` raises
            :class:`UndefinedMetricError`.
    """
    if n_impostors is not None:
        check_far(far, n_impostors)
    ok = np.flatnonzero(fpr <= far)
    return float(thresholds[ok[-1]])  # fpr is non-decreasing and starts at 0 (threshold inf): ok is never empty


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Rate where false accepts equal false rejects, linearly interpolated between ROC points."""
    fnr = 1.0 - tpr
    diff = fpr - fnr
    i = int(np.argmax(diff >= 0))  # first point where FAR has caught up with FRR; diff[-1] = 1 > 0 always
    if i == 0:
        return float(fpr[0])
    w = diff[i] / (diff[i] - diff[i - 1])
    return float(fpr[i] - w * (fpr[i] - fpr[i - 1]))


def _far_key(far: float) -> str:
    return f"tar@far={far:g}"


def roc_metrics(
    scores: Sequence[float] | np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    greater_is_same: bool = True,
) -> MetricReport:
    """ROC curve over all pairs with AUC, EER and TAR at the given FARs.

    AUC is the trapezoidal area under the exact ROC (equal to the Mann-Whitney statistic with ties counted half,
    what scikit-learn's ``roc_auc_score`` returns). A FAR below 1 / (number of impostor pairs) is undefined.

    Returns:
        Values ``auc``, ``eer`` and ``tar@far=<far>`` per far (None with a reason where undefined); curves ``fpr``,
        ``tpr`` and ``thresholds``.
    """
    scores_arr, issame_arr = _as_arrays(scores, issame)
    fpr, tpr, thr = roc_curve_points(scores_arr, issame_arr, greater_is_same)
    n_neg = int((~issame_arr).sum())
    report = MetricReport(curves={"fpr": fpr, "tpr": tpr, "thresholds": thr})
    report.set("auc", float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0))
    report.set("eer", equal_error_rate(fpr, tpr))
    for far in fars:
        try:
            report.set(_far_key(far), tar_at_far(fpr, tpr, far, n_impostors=n_neg))
        except UndefinedMetricError as error:
            report.set_undefined(_far_key(far), str(error))
    return report


def verification_report(
    scores: Sequence[float] | np.ndarray | FoldScorer,
    issame: Sequence[bool] | np.ndarray,
    n_folds: int = 10,
    folds: Sequence[int] | np.ndarray | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    greater_is_same: bool = True,
    thresholds: Sequence[float] | np.ndarray | None = None,
) -> MetricReport:
    """Everything a verification protocol reports, computed once from one set of scores.

    Args:
        scores: Scores in file order, or a :data:`FoldScorer` (then the ROC uses the out-of-fold scores, so no
            pair is scored with statistics fitted on itself).
        issame, n_folds, folds, greater_is_same, thresholds: As in :func:`kfold_accuracy`.
        fars: False-accept rates for TAR.

    Returns:
        Values ``acc``, ``acc_std``, ``acc_sem``, ``auc``, ``eer``, ``tar@far=<far>``, ``threshold`` (mean of the
        fold thresholds); curves ``fpr``, ``tpr``, ``thresholds``, ``scores``, ``issame``, ``fold_accuracies``,
        ``fold_thresholds``; option ``thresholds`` (``exact`` or the grid).
    """
    kf = kfold_accuracy(
        scores, issame, n_folds=n_folds, thresholds=thresholds, greater_is_same=greater_is_same, folds=folds
    )
    roc_scores = kf["scores"] if callable(scores) else np.asarray(scores, dtype=np.float64).ravel()
    issame_arr = np.asarray(issame).astype(bool).ravel()
    report = MetricReport()
    report.set("acc", kf["accuracy"])
    report.set("acc_std", kf["accuracy_std"])
    report.set("acc_sem", kf["accuracy_sem"])
    report.update(roc_metrics(roc_scores, issame_arr, fars=fars, greater_is_same=greater_is_same))
    report.set("threshold", float(np.mean(kf["thresholds"])))
    report.curves.update(
        scores=roc_scores,
        issame=issame_arr,
        fold_accuracies=np.asarray(kf["fold_accuracies"]),
        fold_thresholds=np.asarray(kf["thresholds"]),
    )
    if thresholds is None:
        report.options["thresholds"] = "exact"
    else:
        grid = np.asarray(thresholds, dtype=np.float64).ravel()
        report.options["thresholds"] = f"grid of {grid.size} from {grid.min():g} to {grid.max():g}"
    return report
