"""Known-answer and brute-force tests of the verification metrics."""

from __future__ import annotations

import numpy as np
import pytest

from facetrain.evaluation.verification import (
    best_threshold,
    equal_error_rate,
    fold_ids,
    kfold_accuracy,
    roc_metrics,
    tar_at_far,
)


def _brute_force_kfold(scores: np.ndarray, issame: np.ndarray, n_folds: int) -> list[float]:
    """Every cut between distinct training scores, lowest best cut, folds = consecutive blocks."""
    blocks = np.array_split(np.arange(len(scores)), n_folds)
    accs = []
    for k, test in enumerate(blocks):
        train = np.concatenate([b for j, b in enumerate(blocks) if j != k])
        u = np.unique(scores[train])
        candidates = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
        train_acc = [np.mean((scores[train] > t) == issame[train]) for t in candidates]
        t = candidates[int(np.argmax(train_acc))]
        accs.append(np.mean((scores[test] > t) == issame[test]))
    return accs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kfold_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    issame = rng.random(n) < 0.5
    # Rounded scores create ties, the case where a threshold search is easiest to get wrong.
    scores = np.round(np.where(issame, rng.normal(0.4, 0.3, n), rng.normal(0.0, 0.3, n)), 2)
    got = kfold_accuracy(scores, issame, n_folds=10)
    expected = _brute_force_kfold(scores, issame, 10)
    np.testing.assert_allclose(got["fold_accuracies"], expected, rtol=0, atol=1e-12)
    assert got["accuracy"] == pytest.approx(np.mean(expected))
    assert got["accuracy_std"] == pytest.approx(np.std(expected))
    assert len(got["thresholds"]) == 10


def test_kfold_known_answers() -> None:
    # Perfectly separable: every fold is right.
    scores = np.tile([0.9, 0.8, 0.1, 0.2], 10)
    issame = np.tile([True, True, False, False], 10)
    res = kfold_accuracy(scores, issame, n_folds=10)
    assert res["accuracy"] == 1.0
    assert all(0.2 < t < 0.8 for t in res["thresholds"])
    # Inverted scores: the best a threshold can do is predict one class for everything (half right).
    res = kfold_accuracy(-scores, issame, n_folds=10)
    assert res["accuracy"] == pytest.approx(0.5)


def test_kfold_folds_are_file_order_blocks() -> None:
    assert fold_ids(20, 10).tolist() == [k for k in range(10) for _ in range(2)]
    # A fold whose threshold is learned from the others: fold 0 is mislabelled relative to folds 1-9.
    scores = np.array([0.9, 0.1] + [0.9, 0.1] * 9)
    issame = np.array([False, True] + [True, False] * 9)
    res = kfold_accuracy(scores, issame, n_folds=10)
    assert res["fold_accuracies"][0] == 0.0
    assert res["fold_accuracies"][1:] == [1.0] * 9


def test_explicit_folds_and_distances() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=100)
    issame = scores + rng.normal(scale=0.5, size=100) > 0
    folds = np.repeat(np.arange(10), 10)
    a = kfold_accuracy(scores, issame, folds=folds)
    b = kfold_accuracy(-scores, issame, folds=folds, greater_is_same=False)
    assert a["fold_accuracies"] == b["fold_accuracies"]
    np.testing.assert_allclose(a["thresholds"], -np.asarray(b["thresholds"]))


def _insightface_calculate_roc_accuracy(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> list[float]:
    """Independent re-implementation of InsightFace's calculate_roc accuracy loop (KFold(10, shuffle=False))."""
    n = len(dist)
    fold_size = n // 10
    accs = []
    for k in range(10):
        test = np.arange(k * fold_size, (k + 1) * fold_size) if k < 9 else np.arange(k * fold_size, n)
        train = np.setdiff1d(np.arange(n), test)
        acc_train = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = int(np.argmax(acc_train))
        accs.append(np.mean((dist[test] < thresholds[best]) == issame[test]))
    return accs


def test_grid_mode_matches_insightface_loop() -> None:
    rng = np.random.default_rng(5)
    issame = rng.random(600) < 0.5
    dist = np.clip(np.where(issame, rng.normal(1.0, 0.4, 600), rng.normal(1.8, 0.4, 600)), 0, 4)
    grid = np.arange(0, 4, 0.01)
    ours = kfold_accuracy(dist, issame, n_folds=10, thresholds=grid, greater_is_same=False)
    assert ours["fold_accuracies"] == _insightface_calculate_roc_accuracy(dist, issame, grid)


def test_best_threshold_maximises_training_accuracy() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    issame = np.array([False, True, False, True, True, False])
    t = best_threshold(scores, issame)
    assert 0.35 < t < 0.4


def test_roc_known_answers() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.85])
    issame = np.array([True, True, False, False])
    roc = roc_metrics(scores, issame, fars=(0.5,))
    assert roc["auc"] == pytest.approx(0.75)  # 3 of the 4 positive/negative orderings are right
    assert roc["tar@far=0.5"] == pytest.approx(1.0)  # threshold just below 0.8 admits one of two negatives
    fpr = np.array([0.0, 0.001, 0.01, 1.0])
    tpr = np.array([0.5, 0.6, 0.9, 1.0])
    assert tar_at_far(fpr, tpr, 1e-3) == 0.6
    assert tar_at_far(fpr, tpr, 5e-3) == 0.6
    assert tar_at_far(np.array([0.1, 1.0]), np.array([0.5, 1.0]), 1e-3) == 0.0
    # FRR = 1 - TPR crosses FAR on the segment (0.2, 0.6)-(0.4, 0.9): 0.2 + 0.2t = 0.4 - 0.3t at t = 0.4.
    assert equal_error_rate(np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 0.6, 0.9, 1.0])) == pytest.approx(0.28)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        kfold_accuracy([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy([0.1, float("nan")] * 10, [True, False] * 10)
    with pytest.raises(ValueError, match="n_folds"):
        kfold_accuracy([0.1, 0.2], [True, False], n_folds=10)
