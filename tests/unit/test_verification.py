"""Known-answer, brute-force and reference-parity tests of the verification metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facetrain.evaluation.verification import (
    UNDEFINED,
    MetricReport,
    UndefinedMetricError,
    best_threshold,
    check_far,
    equal_error_rate,
    fold_ids,
    kfold_accuracy,
    mean_subtracted_scorer,
    pair_scores,
    roc_curve_points,
    roc_metrics,
    tar_at_far,
    threshold_grid,
    verification_report,
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
    assert got["accuracy_sem"] == pytest.approx(np.std(expected, ddof=1) / np.sqrt(10))
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
    # Uneven: the first n % k folds are one longer, as sklearn's KFold(shuffle=False) (InsightFace's LFold).
    kfold_sizes = [len(test) for _, test in KFold(10, shuffle=False).split(np.arange(23))]
    assert np.bincount(fold_ids(23, 10)).tolist() == kfold_sizes
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


# --- InsightFace parity (insightface.md §2: eval/verification.py) -----------------------------------------------------
def _insightface_calculate_accuracy(threshold: float, dist: np.ndarray, actual_issame: np.ndarray) -> float:
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    return float(tp + tn) / dist.size


def _insightface_calculate_roc_accuracy(thresholds: np.ndarray, dist: np.ndarray, issame: np.ndarray) -> list[float]:
    """Independent re-implementation of the accuracy part of InsightFace's ``calculate_roc`` loop.

    ``LFold(n_splits=10, shuffle=False)`` is sklearn's KFold; per fold the train accuracy of every threshold,
    ``np.argmax`` (first maximum = smallest threshold), test accuracy at that threshold, ``dist < threshold``.
    """
    accuracy = np.zeros(10)
    for fold_idx, (train_set, test_set) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(len(dist)))):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            acc_train[threshold_idx] = _insightface_calculate_accuracy(threshold, dist[train_set], issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        accuracy[fold_idx] = _insightface_calculate_accuracy(
            thresholds[best_threshold_index], dist[test_set], issame[test_set]
        )
    return accuracy.tolist()


def _insightface_distances(rng: np.random.Generator, n_pairs: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """InsightFace's evaluate(): emb = normalize(orig + flip), pairs interleaved, squared L2 distance."""
    issame = rng.random(n_pairs) < 0.5
    ids = rng.normal(size=(n_pairs, dim))
    a = ids + rng.normal(scale=0.9, size=(n_pairs, dim))
    b = np.where(issame[:, None], ids, rng.normal(size=(n_pairs, dim))) + rng.normal(scale=0.9, size=(n_pairs, dim))
    flip = rng.normal(scale=0.1, size=(2 * n_pairs, dim))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = a, b
    emb = normalize(emb + flip)
    embeddings1, embeddings2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    # Our l2 score is the same arithmetic, bit for bit.
    assert np.array_equal(pair_scores(embeddings1, embeddings2, "l2"), dist)
    return dist, issame


@pytest.mark.parametrize(("n_pairs", "seed"), [(6000, 0), (6003, 1), (600, 2)])
def test_grid_mode_equals_insightface_calculate_roc(n_pairs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dist, issame = _insightface_distances(rng, n_pairs)
    grid = np.arange(0, 4, 0.01)
    # Distances lying exactly on grid values test the strict "<" and the first-argmax tie rule.
    dist[::5] = grid[rng.integers(40, 300, size=dist[::5].size)]
    ours = kfold_accuracy(dist, issame, n_folds=10, thresholds=grid, greater_is_same=False)
    assert ours["fold_accuracies"] == _insightface_calculate_roc_accuracy(grid, dist, issame)  # to the last digit


def test_grid_mode_picks_the_first_of_tied_thresholds() -> None:
    # Every threshold in (0.3, 0.7] separates perfectly: the loop keeps the smallest, 0.31.
    dist = np.tile([0.3, 0.7], 10)
    issame = np.tile([True, False], 10)
    grid = np.arange(0, 4, 0.01)
    res = kfold_accuracy(dist, issame, thresholds=grid, greater_is_same=False)
    assert res["accuracy"] == 1.0
    assert res["thresholds"] == [pytest.approx(0.31)] * 10
    assert res["fold_accuracies"] == _insightface_calculate_roc_accuracy(grid, dist, issame)


def test_grid_mode_with_a_fold_scorer_matches_a_loop() -> None:
    rng = np.random.default_rng(7)
    left, right = normalize(rng.normal(size=(200, 8)) + 2.0), normalize(rng.normal(size=(200, 8)) + 2.0)
    issame = rng.random(200) < 0.5
    grid = np.linspace(-1, 1, 41)
    got = kfold_accuracy(mean_subtracted_scorer(left, right), issame, thresholds=grid)
    for k, test in enumerate(np.array_split(np.arange(200), 10)):
        train = np.ones(200, bool)
        train[test] = False
        s = mean_subtracted_scorer(left, right)(train)
        t = grid[int(np.argmax([np.mean((s[train] > g) == issame[train]) for g in grid]))]
        assert got["fold_accuracies"][k] == np.mean((s[test] > t) == issame[test])


def test_threshold_grid_spec() -> None:
    assert np.array_equal(threshold_grid([0, 4, 0.01]), np.arange(0, 4, 0.01))
    assert threshold_grid(None) is None
    for bad in ([0, 4], [4, 0, 0.01], [0, 4, 0]):
        with pytest.raises(ValueError, match="start, stop, step"):
            threshold_grid(bad)


# --- scores and mean subtraction --------------------------------------------------------------------------------------
def test_cosine_and_l2_scores_agree() -> None:
    rng = np.random.default_rng(4)
    left, right = normalize(rng.normal(size=(300, 16))), normalize(rng.normal(size=(300, 16)))
    cos, l2 = pair_scores(left, right, "cosine"), pair_scores(left, right, "l2")
    np.testing.assert_allclose(l2, 2 - 2 * cos, atol=1e-12)
    issame = cos + rng.normal(scale=0.2, size=300) > 0
    a = kfold_accuracy(cos, issame)
    b = kfold_accuracy(l2, issame, greater_is_same=False)
    assert a["fold_accuracies"] == b["fold_accuracies"]
    with pytest.raises(ValueError, match="score must be one of"):
        pair_scores(left, right, "euclid")


def test_mean_subtraction_known_answer() -> None:
    # Two pairs per fold, 2-D: a large shared offset (10, 0) hides the identity signal (0, ±1) from the cosine.
    left = np.array([[10.0, 1.0], [10.0, 1.0], [10.0, -1.0], [10.0, -1.0]])
    right = np.array([[10.0, 1.0], [10.0, -1.0], [10.0, -1.0], [10.0, 1.0]])
    issame = np.array([True, False, True, False])
    scorer = mean_subtracted_scorer(left, right)
    # Training pairs 2, 3: mean of their four embeddings is (10, -0.5); centred rows (0, ±0.5 or 1.5) normalise
    # to (0, ±1), so the scores are +1 for same and -1 for different pairs.
    train = np.array([False, False, True, True])
    np.testing.assert_allclose(scorer(train), [1.0, -1.0, 1.0, -1.0], atol=1e-12)
    res = kfold_accuracy(scorer, issame, n_folds=2)
    assert res["fold_accuracies"] == [1.0, 1.0]
    np.testing.assert_allclose(res["scores"], [1.0, -1.0, 1.0, -1.0], atol=1e-12)
    # Without it the raw cosines are all within 0.02 of 1 and separate less cleanly.
    raw = pair_scores(normalize(left), normalize(right))
    assert np.ptp(raw) < 0.02


def test_mean_subtraction_uses_only_training_folds() -> None:
    rng = np.random.default_rng(5)
    left, right = rng.normal(size=(40, 4)) + 3.0, rng.normal(size=(40, 4)) + 3.0
    issame = rng.random(40) < 0.5
    res = kfold_accuracy(mean_subtracted_scorer(left, right, "l2"), issame, n_folds=4, greater_is_same=False)
    for test in np.array_split(np.arange(40), 4):
        train = np.setdiff1d(np.arange(40), test)
        mu = np.concatenate([left[train], right[train]]).mean(axis=0)
        expected = np.sum((normalize(left[test] - mu) - normalize(right[test] - mu)) ** 2, axis=1)
        np.testing.assert_allclose(res["scores"][test], expected, atol=1e-12)


# --- ROC, TAR@FAR, EER, AUC -------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("greater_is_same", [True, False])
def test_roc_equals_sklearn(greater_is_same: bool) -> None:
    rng = np.random.default_rng(6)
    issame = rng.random(3000) < 0.3
    scores = np.round(np.where(issame, rng.normal(0.5, 0.2, 3000), rng.normal(0.0, 0.2, 3000)), 2)  # ties
    signed = scores if greater_is_same else -scores
    fpr, tpr, thr = roc_curve_points(signed, issame, greater_is_same=greater_is_same)
    sk_fpr, sk_tpr, sk_thr = roc_curve(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
    np.testing.assert_allclose(thr[1:], sk_thr[1:] if greater_is_same else -sk_thr[1:])
    assert roc_metrics(signed, issame, greater_is_same=greater_is_same)["auc"] == pytest.approx(
        roc_auc_score(issame, scores), abs=1e-12
    )


def test_tar_at_far_below_resolution_is_undefined() -> None:
    rng = np.random.default_rng(8)
    issame = np.r_[np.ones(60, bool), np.zeros(40, bool)]  # 40 impostor pairs: smallest FAR 1/40 = 0.025
    scores = np.where(issame, rng.normal(1, 1, 100), rng.normal(0, 1, 100))
    report = roc_metrics(scores, issame, fars=(1e-2, 0.025, 0.1))
    assert report["tar@far=0.01"] is None
    assert "below 1/40" in report.reasons["tar@far=0.01"]
    assert report["tar@far=0.025"] is not None and report["tar@far=0.1"] is not None
    scalars = report.scalars("val/lfw/")
    assert "val/lfw/tar@far=0.01" not in scalars and all(np.isfinite(v) for v in scalars.values())
    js = report.to_json("lfw/")
    assert js["lfw/tar@far=0.01"] == UNDEFINED
    assert "1/40" in js["lfw/tar@far=0.01_reason"]
    assert isinstance(js["lfw/tar@far=0.025"], float)
    with pytest.raises(UndefinedMetricError, match="below 1/40"):
        check_far(1e-2, 40)
    with pytest.raises(UndefinedMetricError):
        tar_at_far(np.array([0, 0.5, 1.0]), np.array([0, 0.5, 1.0]), 1e-3, n_impostors=2)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_far(0.0, 40)


def test_verification_report_keys_and_curves() -> None:
    rng = np.random.default_rng(9)
    issame = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = np.where(issame, rng.normal(0.6, 0.2, 600), rng.normal(0.1, 0.2, 600))
    report = verification_report(scores, issame)  # 300 impostors: 1e-4 undefined, 1e-3 undefined, 1e-2 defined
    assert set(report.values) == {
        "acc", "acc_std", "acc_sem", "auc", "eer", "threshold", "tar@far=0.0001", "tar@far=0.001", "tar@far=0.01",
    }  # fmt: skip
    assert report["tar@far=0.0001"] is None and report["tar@far=0.001"] is None
    assert 0 <= report["tar@far=0.01"] <= 1
    assert report.options == {"thresholds": "exact"}
    assert report["scores"].shape == (600,) and report["fpr"][0] == 0.0 and report["tpr"][-1] == 1.0
    assert report["acc"] == kfold_accuracy(scores, issame)["accuracy"]
    grid = verification_report(scores, issame, thresholds=np.arange(-1, 1, 0.01))
    assert grid.options["thresholds"].startswith("grid of 200")


def test_metric_report_merge_and_undefined() -> None:
    a = MetricReport()
    a.set("x", 1)
    a.set_undefined("y", "no impostors")
    b = MetricReport()
    b.set("y", 0.5)
    a.update(b)
    assert a.values == {"x": 1.0, "y": 0.5} and a.reasons == {}
    with pytest.raises(ValueError, match="needs a reason"):
        a.set("z", None)
    with pytest.raises(KeyError):
        a["missing"]


# --- bad input --------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        kfold_accuracy([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy([0.1, float("nan")] * 10, [True, False] * 10)
    with pytest.raises(ValueError, match="NaN"):
        roc_metrics([0.1, float("inf")], [True, False])
    with pytest.raises(ValueError, match="n_folds"):
        kfold_accuracy([0.1, 0.2], [True, False], n_folds=10)
    with pytest.raises(ValueError, match="both same and different"):
        roc_metrics([0.1, 0.2], [True, True])


def test_identical_embeddings_are_an_error_not_half_right() -> None:
    emb = np.tile(normalize(np.ones((1, 8))), (40, 1))
    scores = pair_scores(emb[:20], emb[20:])
    issame = np.tile([True, False], 10)
    for call in (
        lambda: kfold_accuracy(scores, issame),
        lambda: roc_metrics(scores, issame),
        lambda: verification_report(scores, issame),
        lambda: kfold_accuracy(mean_subtracted_scorer(emb[:20], emb[20:]), issame),
    ):
        with pytest.raises(ValueError, match="are equal"):
            call()


def test_best_threshold_maximises_training_accuracy() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    issame = np.array([False, True, False, True, True, False])
    t = best_threshold(scores, issame)
    assert 0.35 < t < 0.4
