"""IJB 1:1 and 1:N protocol maths against brute-force loops written here (template pooling, both TARs, CMC, TPIR)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from facetrain.evaluation import ijb
from facetrain.evaluation.ijb import pair_cosines, roc_points, template_features, verification
from facetrain.evaluation.ijb_search import identification
from facetrain.evaluation.verification import UNDEFINED, roc_curve_points


def _faces(seed: int, n: int = 60, dim: int = 4, n_templates: int = 12) -> tuple[np.ndarray, ...]:
    """Features on a coarse integer grid (so many pair scores tie), template and media ids, faceness scores."""
    rng = np.random.default_rng(seed)
    features = rng.integers(-2, 3, size=(n, dim)).astype(np.float64)
    features[np.all(features == 0, axis=1), 0] = 1.0  # no zero face (N0 normalises each face)
    templates = rng.integers(0, n_templates, size=n) * 10 + 3  # ids need not be 0..T-1
    medias = rng.integers(0, 3, size=n) + templates * 100  # media ids are unique to a template in IJB
    faceness = rng.uniform(0.5, 2.0, size=n)
    return features, templates, medias, faceness


def _brute_templates(features, templates, medias, faceness, keep_norm):  # noqa: ANN001, ANN202
    out = {}
    for t in sorted(set(templates.tolist())):
        total = np.zeros(features.shape[1])
        for m in sorted(set(medias[templates == t].tolist())):
            rows = [i for i in range(len(templates)) if templates[i] == t and medias[i] == m]
            faces = []
            for i in rows:
                f = features[i] if keep_norm else features[i] / np.sqrt(np.sum(features[i] ** 2))
                faces.append(f * (faceness[i] if faceness is not None else 1.0))
            total += np.mean(faces, axis=0)
        out[t] = total / np.sqrt(np.sum(total**2))
    return out


@pytest.mark.parametrize("keep_norm", [True, False])
@pytest.mark.parametrize("detector", [True, False])
def test_template_pooling_all_four_variants(keep_norm: bool, detector: bool) -> None:
    features, templates, medias, faceness = _faces(0)
    scores = faceness if detector else None
    ids, feats = template_features(features, templates, medias, faceness=scores, keep_norm=keep_norm)
    expected = _brute_templates(features, templates, medias, scores, keep_norm)
    assert ids.tolist() == sorted(expected)
    np.testing.assert_allclose(feats, np.stack([expected[t] for t in ids]), rtol=0, atol=1e-12)


def test_pooling_in_several_blocks_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    features, templates, medias, faceness = _faces(7, n=200, dim=8, n_templates=40)
    ids, whole = template_features(features, templates, medias, faceness)
    monkeypatch.setattr(ijb, "_POOL_COLUMNS", 3)  # several column blocks
    ids_blocks, blocks = template_features(features, templates, medias, faceness)
    np.testing.assert_array_equal(ids, ids_blocks)
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-15)


def test_roc_points_equals_the_verification_modules_roc() -> None:
    rng = np.random.default_rng(8)
    for _ in range(20):
        scores = np.round(rng.normal(size=300), 1) + 0.0  # many ties (and -0.0 == 0.0)
        issame = rng.random(300) < 0.2
        for got, expected in zip(roc_points(scores, issame), roc_curve_points(scores, issame)):
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="all 3 pair scores are equal"):
        roc_points(np.ones(3), np.array([True, False, False]))


def test_the_variants_differ() -> None:
    features, templates, medias, faceness = _faces(1)
    variants = [template_features(features, templates, medias, f, k)[1] for f in (None, faceness) for k in (1, 0)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(variants[a], variants[b])


def _brute_roc_tars(scores: list[float], labels: list[int], far: float) -> tuple[float, float]:
    """Strict TAR (largest TPR with FPR <= far, over every threshold) and InsightFace's (sklearn ROC, nearest)."""
    n_pos, n_neg = sum(labels), len(labels) - sum(labels)
    strict = 0.0
    for t in [float("inf"), *scores]:
        fp = sum(1 for s, y in zip(scores, labels) if s >= t and not y)
        tp = sum(1 for s, y in zip(scores, labels) if s >= t and y)
        if fp / n_neg <= far:
            strict = max(strict, tp / n_pos)
    fpr, tpr, _ = roc_curve(labels, scores)
    best = 0
    for i in range(len(fpr)):
        if abs(fpr[i] - far) < abs(fpr[best] - far):
            best = i
    return strict, float(tpr[best])


@pytest.mark.parametrize("seed", [2, 3])
def test_verification_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(1000, size=30, replace=False))
    feats = rng.integers(-1, 2, size=(30, 3)).astype(np.float64)  # 26 directions: many exactly tied scores
    feats[np.all(feats == 0, axis=1)] = [1.0, 1.0, 0.0]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    subject = {int(t): int(rng.integers(0, 6)) for t in ids}
    t1, t2 = np.triu_indices(ids.size, k=1)
    t1, t2 = ids[t1], ids[t2]
    labels = np.array([int(subject[int(a)] == subject[int(b)]) for a, b in zip(t1, t2)])
    fars = (1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3)
    report = verification(ids, feats, t1, t2, labels, fars=fars)
    brute_scores = [float(np.dot(feats[list(ids).index(a)], feats[list(ids).index(b)])) for a, b in zip(t1, t2)]
    np.testing.assert_allclose(report["scores"], brute_scores, atol=1e-12)
    assert np.unique(report["scores"]).size < len(brute_scores) // 4  # the grid makes many exact ties
    n_imp = int((labels == 0).sum())
    checked = 0
    for far in fars:
        if far * n_imp < 1:
            assert report[f"tar@far={far:g}"] is None and report[f"tar@far={far:g}/strict"] is None
            continue
        strict, nearest = _brute_roc_tars(report["scores"].tolist(), labels.tolist(), far)
        assert report[f"tar@far={far:g}/strict"] == pytest.approx(strict, abs=1e-15)
        assert report[f"tar@far={far:g}"] == pytest.approx(nearest, abs=1e-15)
        checked += 1
    assert checked >= 5
    from sklearn.metrics import roc_auc_score

    assert report["auc"] == pytest.approx(roc_auc_score(labels, report["scores"]), abs=1e-12)


def test_nearest_and_strict_tar_known_answer() -> None:
    # Pair scores: genuine 0.95, 0.8, 0.6, 0.45; impostor 0.9, 0.5, 0.4, 0.3. sklearn's ROC keeps the corners
    # FPR [0, 0, .25, .25, .5, .5, 1], TPR [0, .25, .25, .75, .75, 1, 1]. At FAR 0.3 the nearest FPR is 0.25 and
    # its first point has TPR 0.25 (InsightFace's number); the strict TAR is 0.75 (FPR 0.25 <= 0.3).
    scores = np.array([0.95, 0.8, 0.6, 0.45, 0.9, 0.5, 0.4, 0.3])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    feats = np.concatenate([[[1.0, 0.0]], np.stack([scores, np.sqrt(1 - scores**2)], 1)])
    report = verification(np.arange(9), feats, np.zeros(8, int), np.arange(1, 9), labels, fars=(0.3, 0.4, 1.0))
    assert report["tar@far=0.3"] == 0.25 and report["tar@far=0.3/strict"] == 0.75
    assert report["tar@far=0.4"] == 0.75 and report["tar@far=0.4/strict"] == 0.75
    assert report["tar@far=1"] == 1.0 and report["tar@far=1/strict"] == 1.0
    assert report["auc"] == pytest.approx(12 / 16)  # genuine-over-impostor orderings: 4 + 3 + 3 + 2 of 16
    # Four scores each shared by one genuine and one impostor pair: the exact ROC is the diagonal (.25, .25) ...
    # (1, 1); sklearn keeps only its ends, so the FPR nearest 0.5 is 0.25 (TPR 0.25); strictly, TPR 0.5.
    tied = np.repeat([0.9, 0.7, 0.5, 0.3], 2)
    feats = np.concatenate([[[1.0, 0.0]], np.stack([tied, np.sqrt(1 - tied**2)], 1)])
    report = verification(np.arange(9), feats, np.zeros(8, int), np.arange(1, 9), np.tile([1, 0], 4), fars=(0.5,))
    assert report["tar@far=0.5"] == 0.25 and report["tar@far=0.5/strict"] == 0.5


def test_undefined_far_and_unknown_template() -> None:
    feats = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    ids = np.array([1, 2, 5])
    report = verification(ids, feats, [1, 1, 2], [2, 5, 5], [1, 0, 0])
    assert report["tar@far=1e-06"] is None and report["tar@far=0.1/strict"] is None
    assert "below 1/2" in report.to_json()["tar@far=0.1_reason"]
    assert report.to_json()["tar@far=0.0001"] == UNDEFINED
    with pytest.raises(ValueError, match="pair 2 names template 4"):
        verification(ids, feats, [1, 1, 4], [2, 5, 5], [1, 0, 0])
    with pytest.raises(ValueError, match="pair 1 names template 9"):
        verification(ids, feats, [1, 1, 2], [2, 9, 5], [1, 0, 0])


@pytest.mark.parametrize("block", [1 << 24, 7])
def test_pair_cosines_dense_and_sparse_paths(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ijb, "_SCORE_BLOCK", block)
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(50, 8))
    dense = np.array([(a, b) for a in range(5) for b in range(5, 50)])  # gallery x probe: products pay off
    sparse = rng.integers(0, 50, size=(30, 2))  # few pairs over many templates: gathered dot products
    for pairs in (dense, sparse, dense[rng.permutation(len(dense))]):
        expected = [float(feats[a] @ feats[b]) for a, b in pairs]
        np.testing.assert_allclose(pair_cosines(feats, pairs[:, 0], pairs[:, 1]), expected, rtol=1e-12)


def _round_half_up(x: float) -> int:
    return int(Decimal(x).quantize(Decimal(1), ROUND_HALF_UP))


def _brute_search(feats, ids, gallery, probe, fpir):  # noqa: ANN001, ANN202
    """Loops over probes: CMC ranks of mated searches, TPIR at FPIR (OpenSetROC.m operating point, rank 1)."""
    row = {int(t): i for i, t in enumerate(ids)}
    ranks, mate_scores, non_mated = [], [], []
    for pt, ps in zip(*probe):
        by_subject: dict[int, float] = {}
        for gt, gs in zip(*gallery):
            s = float(feats[row[int(pt)]] @ feats[row[int(gt)]])
            by_subject[int(gs)] = max(by_subject.get(int(gs), -np.inf), s)
        if int(ps) in by_subject:
            mate = by_subject[int(ps)]
            ranks.append(sum(1 for s in by_subject.values() if s >= mate))
            mate_scores.append(mate)
        else:
            non_mated.append(max(by_subject.values()))
    non_mated.sort(reverse=True)
    k = _round_half_up(fpir * len(non_mated))
    threshold = non_mated[k - 1] if k < len(non_mated) else min(non_mated + mate_scores) - 1
    tpir = sum(1 for r, s in zip(ranks, mate_scores) if r == 1 and s >= threshold) / len(ranks)
    return ranks, tpir


@pytest.mark.parametrize("seed", [5, 6])
def test_identification_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_templates = 70
    ids = np.arange(n_templates) * 3 + 1
    feats = rng.integers(-2, 3, size=(n_templates, 5)).astype(float)
    feats[np.all(feats == 0, axis=1), 0] = 1
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    subjects = rng.permutation(20)
    g1 = (ids[:10], subjects[:10])  # disjoint galleries of 10 subjects each
    g2 = (ids[10:20], subjects[10:20])
    probe = (ids[20:], rng.choice(subjects, size=n_templates - 20))
    report = identification(ids, feats, {"G1": g1, "G2": g2}, probe, ranks=(1, 2, 5), fpirs=(0.1, 0.25, 0.5))
    for fpir in (0.1, 0.25, 0.5):
        tpirs = []
        for name, gallery in (("G1", g1), ("G2", g2)):
            ranks, tpir = _brute_search(feats, ids, gallery, probe, fpir)
            for k in (1, 2, 5):
                assert report[f"{name}/rank{k}"] == pytest.approx(np.mean(np.array(ranks) <= k))
            assert report[f"{name}/tpir@fpir={fpir:g}"] == pytest.approx(tpir)
            assert report[f"{name}/mated"] == len(ranks)
            tpirs.append(tpir)
        assert report[f"tpir@fpir={fpir:g}"] == pytest.approx(np.mean(tpirs))
    assert report["rank1"] == pytest.approx((report["G1/rank1"] + report["G2/rank1"]) / 2)
    assert report["G1/cmc"].shape == (5,)
    small = identification(ids, feats, {"G1": g1, "G2": g2}, probe, fpirs=(0.001,))
    assert small["tpir@fpir=0.001"] is None and "gallery G1" in small.reasons["tpir@fpir=0.001"]
    with pytest.raises(ValueError, match="probe template 0 names template 2"):
        identification(ids, feats, {"G1": g1}, (np.array([2]), np.array([0])))
