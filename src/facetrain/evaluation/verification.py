"""Pair-verification metrics: k-fold accuracy, ROC, TAR@FAR, AUC and EER.

Pure NumPy and scikit-learn (no torch), so every number here can be checked against hand-computed arrays.

The k-fold protocol is LFW's View 2 (Huang et al., UMass TR 07-49; protocols.md §2.3): the pairs are split into
``n_folds`` consecutive blocks in file order, the threshold is chosen on the other ``n_folds - 1`` folds and the
accuracy is measured on the held-out fold. By default the threshold is *exact*: every cut between two distinct
training scores is considered, so no grid can miss the optimum (the cam-softmax reference code used a 50-point
grid, InsightFace a 0.01 grid on squared distances).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _as_arrays(
    scores: Sequence[float] | np.ndarray, issame: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    issame = np.asarray(issame).astype(bool).ravel()
    if scores.shape != issame.shape:
        raise ValueError(f"scores and issame differ in length: {scores.size} vs {issame.size}")
    if scores.size == 0:
        raise ValueError("no pairs to evaluate")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite")
    return scores, issame


def fold_ids(n_pairs: int, n_folds: int) -> np.ndarray:
    """Fold index of each pair when ``n_pairs`` pairs in file order form ``n_folds`` consecutive blocks."""
    if not 2 <= n_folds <= n_pairs:
        raise ValueError(f"n_folds must be in [2, {n_pairs}] for {n_pairs} pairs, got {n_folds}")
    return np.concatenate(
        [np.full(len(block), k) for k, block in enumerate(np.array_split(np.arange(n_pairs), n_folds))]
    )


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


def _grid_threshold(scores: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> float:
    # First maximum, as InsightFace's calculate_roc (np.argmax) does.
    accs = [accuracy_at(scores, issame, t) for t in thresholds]
    return float(thresholds[int(np.argmax(accs))])


def kfold_accuracy(
    scores: Sequence[float] | np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    n_folds: int = 10,
    thresholds: Sequence[float] | np.ndarray | None = None,
    greater_is_same: bool = True,
    folds: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float | list[float]]:
    """k-fold verification accuracy with the threshold chosen on the other folds (LFW View 2 protocol).

    Args:
        scores: One similarity (or distance, see ``greater_is_same``) per pair, in file order.
        issame: True where the pair shows one identity.
        n_folds: Number of consecutive folds in file order (10 for LFW and YTF).
        thresholds: None for the exact search over all cuts; a grid to choose from instead (InsightFace style).
        greater_is_same: True for similarities (same when score > t); False for distances (same when score < t).
        folds: Explicit fold index per pair (e.g. YTF split numbers); overrides ``n_folds``.

    Returns:
        ``accuracy`` (mean over folds), ``accuracy_std`` (population std, as InsightFace and numpy report),
        ``accuracy_sem`` (std / sqrt(k), the LFW "standard error"), ``fold_accuracies`` and ``thresholds`` (one per
        fold, in the units of ``scores``).
    """
    scores, issame = _as_arrays(scores, issame)
    fold_of = fold_ids(scores.size, n_folds) if folds is None else np.asarray(folds).ravel()
    if fold_of.shape != scores.shape:
        raise ValueError(f"folds has {fold_of.size} entries for {scores.size} pairs")
    sign = 1.0 if greater_is_same else -1.0
    signed = sign * scores
    grid = None if thresholds is None else sign * np.asarray(thresholds, dtype=np.float64)
    accs, chosen = [], []
    for k in np.unique(fold_of):
        test, train = fold_of == k, fold_of != k
        if grid is None:
            t = best_threshold(signed[train], issame[train])
        else:
            t = _grid_threshold(signed[train], issame[train], grid)
        accs.append(accuracy_at(signed[test], issame[test], t))
        chosen.append(sign * t)
    accs_arr = np.asarray(accs)
    return {
        "accuracy": float(accs_arr.mean()),
        "accuracy_std": float(accs_arr.std()),
        "accuracy_sem": float(accs_arr.std(ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else 0.0,
        "fold_accuracies": [float(a) for a in accs],
        "thresholds": [float(t) for t in chosen],
    }


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """Highest true-accept rate whose false-accept rate does not exceed ``far`` (0 when none does)."""
    ok = fpr <= far
    return float(tpr[ok].max()) if np.any(ok) else 0.0


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Rate where false accepts equal false rejects, linearly interpolated between ROC points."""
    fnr = 1.0 - tpr
    diff = fpr - fnr
    i = int(np.argmax(diff >= 0))  # first point where FAR has caught up with FRR; diff[-1] = 1 > 0 always
    if i == 0:
        return float(fpr[0])
    w = diff[i] / (diff[i] - diff[i - 1])
    return float(fpr[i] - w * (fpr[i] - fpr[i - 1]))


def roc_metrics(
    scores: Sequence[float] | np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    fars: Sequence[float] = (1e-3, 1e-2),
) -> dict[str, float | np.ndarray]:
    """ROC curve over all pairs with AUC, EER and TAR at the given FARs.

    Returns:
        ``auc``, ``eer``, ``tar@far=<far>`` per far, and the curve as ``fpr`` and ``tpr`` arrays.
    """
    scores, issame = _as_arrays(scores, issame)
    if issame.all() or (~issame).all():
        raise ValueError("ROC needs both same and different pairs")
    fpr, tpr, _ = roc_curve(issame, scores, drop_intermediate=False)
    out: dict[str, float | np.ndarray] = {
        "auc": float(roc_auc_score(issame, scores)),
        "eer": equal_error_rate(fpr, tpr),
        "fpr": fpr,
        "tpr": tpr,
    }
    for far in fars:
        out[f"tar@far={far:g}"] = tar_at_far(fpr, tpr, far)
    return out


def verification_report(
    scores: Sequence[float] | np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    n_folds: int = 10,
    folds: Sequence[int] | np.ndarray | None = None,
    fars: Sequence[float] = (1e-3, 1e-2),
) -> dict[str, float]:
    """Scalar summary for logging: acc, acc_std, acc_sem, auc, eer and tar@far=... (ROC arrays excluded)."""
    kf = kfold_accuracy(scores, issame, n_folds=n_folds, folds=folds)
    roc = roc_metrics(scores, issame, fars=fars)
    report = {"acc": kf["accuracy"], "acc_std": kf["accuracy_std"], "acc_sem": kf["accuracy_sem"]}
    report.update({k: v for k, v in roc.items() if not isinstance(v, np.ndarray)})
    return report
