"""Hand-built known answers for open-set identification (BLUFR DIR@FAR), rank-1, VR and the BLUFR list reader."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import normalize

from facetrain.evaluation.openset import (
    BLUFR_OPEN_SET_FARS,
    OpenSetScores,
    OpenSetTrial,
    blufr_identity,
    blufr_trials,
    dir_at_far,
    dir_far_curve,
    dir_thresholds,
    matlab_round,
    open_set_report,
    open_set_scores,
    rank1_accuracy,
    read_blufr_list,
    read_blufr_lists,
    split_gallery_probe,
    verification_rate,
)
from facetrain.evaluation.verification import UNDEFINED, UndefinedMetricError, roc_metrics


def _unit(*scores: float) -> np.ndarray:
    """A unit vector whose dot products with the gallery axes e0, e1, e2 are exactly ``scores``."""
    rest = np.sqrt(1.0 - sum(s * s for s in scores))
    return np.array([*scores, rest])


# Gallery: identities A, B, C on the axes e0, e1, e2; scores are the probe's first three coordinates.
GALLERY = np.eye(4)[:3]
GALLERY_IDS = np.array(["A", "B", "C"])
PROBES = np.stack(
    [
        _unit(0.9, 0.1, 0.0),  # A: rank 1, score 0.9
        _unit(0.3, 0.6, 0.0),  # B: rank 1, score 0.6
        _unit(0.5, 0.2, 0.4),  # C: rank 2 (A scores higher), score 0.4
        _unit(0.35, 0.1, 0.2),  # A: rank 1, score 0.35
        _unit(0.7, 0.0, 0.0),  # impostor D: best 0.7
        _unit(0.0, 0.5, 0.0),  # impostor D: best 0.5
        _unit(0.1, 0.2, 0.3),  # impostor E: best 0.3
        _unit(0.0, 0.0, 0.2),  # impostor E: best 0.2
    ]
)
PROBE_IDS = np.array(["A", "B", "C", "A", "D", "D", "E", "E"])


def test_scores_ranks_and_impostors() -> None:
    s = open_set_scores(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS)
    np.testing.assert_allclose(s.genuine_scores, [0.9, 0.6, 0.4, 0.35])
    assert s.genuine_ranks.tolist() == [1, 1, 2, 1]
    np.testing.assert_allclose(s.impostor_scores, [0.7, 0.5, 0.3, 0.2])


@pytest.mark.parametrize(
    ("far", "rank", "expected"),
    [
        # 4 impostors, best scores 0.7 > 0.5 > 0.3 > 0.2; OpenSetROC.m: threshold = the round(far * 4)-th of them.
        (0.25, 1, 0.25),  # 1 false alarm: threshold 0.7, rank-1 genuines >= it: 0.9
        (0.3, 1, 0.25),  # round(1.2) = 1 false alarm: same operating point
        (0.5, 1, 0.5),  # threshold 0.5: 0.9, 0.6
        (0.5, 2, 0.5),  # rank 2 admits the C probe, but its 0.4 is below 0.5
        (0.625, 2, 1.0),  # round(2.5) = 3 (MATLAB rounds halves up): threshold 0.3 admits C (0.4) and A (0.35)
        (0.75, 1, 0.75),  # threshold 0.3: 0.9, 0.6, 0.35 (0.4 is rank 2)
        (1.0, 1, 0.75),  # every impostor accepted: DIR = rank-1 rate
        (0.0, 1, 0.25),  # FAR 0: threshold midway between 0.7 and the lowest genuine above it (0.9): 0.8
    ],
)
def test_dir_at_far_known_answers(far: float, rank: int, expected: float) -> None:
    assert dir_at_far(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, far=far, rank=rank) == pytest.approx(expected)


def _open_set_roc(
    score: np.ndarray, gal_labels: np.ndarray, prob_labels: np.ndarray, far_points: list[float], ranks: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Statement-by-statement transcription of BLUFR's ``OpenSetROC.m`` (v1.0, 2014-07-22, S. Liao).

    ``score`` is gallery × probe, as in MATLAB. Returns ``(DIR, FAR)`` with DIR ranks × FARs.
    """
    binary = gal_labels[:, None] == prob_labels[None, :]
    t = binary.any(axis=0)
    gen, imp = np.flatnonzero(t), np.flatnonzero(~t)
    n_gen, n_imp = gen.size, imp.size
    # MATLAB round(): halves away from zero (Decimal, independent of the code under test).
    false_alarms = np.array([int(Decimal(f * n_imp).quantize(Decimal(1), ROUND_HALF_UP)) for f in far_points])
    imp_score = np.sort(score[:, imp].max(axis=0))[::-1]
    s = score[:, gen].copy()
    sorted_index = np.argsort(-s, axis=0, kind="stable")  # sort(S, 'descend') is stable in MATLAB
    s[~binary[:, gen]] = -np.inf
    gen_score, gen_gal = s.max(axis=0), s.argmax(axis=0)  # max returns the first maximum, as MATLAB's
    prob_ranks = np.array([np.flatnonzero(sorted_index[:, j] == gen_gal[j])[0] + 1 for j in range(n_gen)])
    is_zero, is_one = false_alarms == 0, false_alarms == n_imp
    thresholds = np.zeros(false_alarms.size)
    mid = ~is_zero & ~is_one
    thresholds[mid] = imp_score[false_alarms[mid] - 1]
    high = gen_score[gen_score > imp_score[0]]
    eps = np.sqrt(np.finfo(float).eps)
    thresholds[is_zero] = imp_score[0] + eps if high.size == 0 else (imp_score[0] + high.min()) / 2
    thresholds[is_one] = min(imp_score[-1], gen_score.min()) - eps
    t1 = gen_score[:, None] >= thresholds[None, :]
    t2 = prob_ranks[:, None] <= np.asarray(ranks)[None, :]
    return (t1[:, None, :] & t2[:, :, None]).mean(axis=0), false_alarms / n_imp


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_dir_equals_a_transcription_of_open_set_roc(ties: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_gal, n_probe = 5, 40
    gallery = np.eye(n_gal + 1)[:n_gal]  # probe p's score against gallery g is exactly probe[p, g]
    scores = rng.uniform(0.0, 0.4, size=(n_probe, n_gal))
    probe_ids = rng.integers(0, 9, size=n_probe)  # identities 5..8 have no gallery image: impostors
    if ties:  # a 0.1 grid: many equal scores across probes and at the thresholds
        scores = np.round(scores * 10) / 10
        # A true identity tied with another gallery identity of its row moves half a step (off the 0.1 grid): the
        # rank tie rule is a documented difference (ties against the probe, MATLAB: gallery order).
        for p in np.flatnonzero(probe_ids < n_gal):
            if np.sum(scores[p] == scores[p, probe_ids[p]]) > 1:
                scores[p, probe_ids[p]] += 0.05
    probes = np.hstack([scores, np.sqrt(1.0 - (scores**2).sum(axis=1, keepdims=True))])
    gal_ids = np.arange(n_gal)
    n_imp = int(np.sum(probe_ids >= n_gal))
    fars = [0.0, *[k / n_imp for k in range(1, n_imp + 1)], 0.5 / n_imp * 3, 0.3, 0.55, 1.0]
    ranks = [1, 2, 3, 6]
    expected, expected_far = _open_set_roc(scores.T, gal_ids, probe_ids, fars, ranks)
    for i, rank in enumerate(ranks):
        for j, far in enumerate(fars):
            got = dir_at_far(gallery, gal_ids, probes, probe_ids, far=far, rank=rank)
            assert got == expected[i, j], (rank, far)
    got_fars, got_dirs = dir_far_curve(gallery, gal_ids, probes, probe_ids)
    np.testing.assert_array_equal(got_dirs, expected[0, 1 : n_imp + 1])
    np.testing.assert_allclose(got_fars, expected_far[1 : n_imp + 1])


def test_official_thresholds_including_far_zero_and_one() -> None:
    s = open_set_scores(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS)
    eps = np.sqrt(np.finfo(float).eps)
    # k = 0: midway between the top impostor (0.7) and the lowest genuine score above it (0.9); k = N_imp: sqrt(eps)
    # below the lowest impostor (0.2) and genuine (0.35) score.
    expected = [0.8, 0.7, 0.5, 0.3, 0.2 - eps]
    np.testing.assert_allclose(dir_thresholds(s, np.arange(5)), expected, rtol=0, atol=1e-15)
    low = OpenSetScores(np.array([0.1, 0.2]), np.array([1, 1]), np.array([0.5, 0.3]))
    assert dir_thresholds(low, np.array([0]))[0] == 0.5 + eps  # no genuine score above the top impostor


def test_matlab_round_takes_halves_away_from_zero() -> None:
    assert [matlab_round(x) for x in (0.0, 0.49, 0.5, 1.5, 2.5, 2.4999, 7.0)] == [0, 0, 1, 2, 3, 2, 7]


def test_raw_embeddings_are_normalised() -> None:
    scaled = dir_at_far(3.0 * GALLERY, GALLERY_IDS, PROBES * np.arange(1, 9)[:, None], PROBE_IDS, far=0.75)
    assert scaled == dir_at_far(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, far=0.75) == pytest.approx(0.75)
    assert rank1_accuracy(GALLERY, GALLERY_IDS, 5.0 * PROBES, PROBE_IDS) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="row 1 is zero"):
        dir_at_far(GALLERY, GALLERY_IDS, PROBES * np.r_[1, 0, np.ones(6)][:, None], PROBE_IDS, far=0.75)


def test_far_below_one_impostor_is_undefined() -> None:
    with pytest.raises(UndefinedMetricError, match="below 1/4"):
        dir_at_far(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, far=0.2)  # OpenSetROC.m would measure 1 false alarm
    with pytest.raises(UndefinedMetricError, match="without impostor probes"):
        dir_at_far(GALLERY, GALLERY_IDS, PROBES[:4], PROBE_IDS[:4], far=0.5)


def test_dir_far_curve_exact_and_on_a_grid() -> None:
    fars, dirs = dir_far_curve(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS)
    np.testing.assert_allclose(fars, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(dirs, [0.25, 0.5, 0.75, 0.75])
    fars, dirs = dir_far_curve(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, fars=[0.3, 0.6, 0.8], rank=2)
    np.testing.assert_allclose(dirs, [0.25, 0.5, 1.0])
    with pytest.raises(UndefinedMetricError):
        dir_far_curve(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, fars=[0.01])


def test_rank1_accuracy_and_ties_count_against_the_probe() -> None:
    assert rank1_accuracy(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS) == pytest.approx(0.75)
    tied = _unit(0.5, 0.5, 0.0)[None]  # A and B score alike: no credit for A
    assert rank1_accuracy(GALLERY, GALLERY_IDS, tied, np.array(["A"])) == 0.0
    with pytest.raises(ValueError, match="no genuine probes"):
        rank1_accuracy(GALLERY, GALLERY_IDS, PROBES[4:], PROBE_IDS[4:])


def test_identity_with_several_gallery_images_scores_by_its_best() -> None:
    gallery = np.stack([np.eye(4)[0], np.eye(4)[1], np.eye(4)[3]])
    ids = np.array(["A", "B", "A"])
    probe = np.array([[0.0, 0.5, 0.0, np.sqrt(0.75)]])  # B scores 0.5, A's second image sqrt(0.75)
    s = open_set_scores(gallery, ids, probe, np.array(["A"]))
    assert s.genuine_scores[0] == pytest.approx(np.sqrt(0.75)) and s.genuine_ranks[0] == 1


def test_identical_embeddings_and_nan_are_errors() -> None:
    same = np.tile(normalize(np.ones((1, 4))), (3, 1))
    with pytest.raises(ValueError, match="are equal"):
        dir_at_far(same, ["A", "B", "C"], same, ["A", "D", "E"], far=0.5)
    bad = PROBES.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dir_at_far(GALLERY, GALLERY_IDS, bad, PROBE_IDS, far=0.5)


def test_verification_rate_equals_all_pairs_tar_at_far() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 15, size=90)
    centres = normalize(rng.normal(size=(15, 16)))
    emb = normalize(centres[labels] + rng.normal(scale=0.5, size=(90, 16)))
    i, j = np.triu_indices(90, k=1)
    scores, issame = np.sum(emb[i] * emb[j], axis=1), labels[i] == labels[j]
    raw = emb * rng.uniform(0.5, 3.0, size=(90, 1))  # raw embeddings give the cosine result too
    for far in (1e-3, 1e-2, 0.1):
        expected = roc_metrics(scores, issame, fars=(far,))[f"tar@far={far:g}"]
        assert verification_rate(emb, labels, far=far, block=7) == pytest.approx(expected, abs=1e-12)
        assert verification_rate(raw, labels, far=far, block=7) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(UndefinedMetricError):
        verification_rate(emb, labels, far=1e-6)


def test_seeded_gallery_probe_split() -> None:
    labels = np.repeat(np.arange(20), 4)
    a = split_gallery_probe(labels, seed=3, impostor_fraction=0.25)
    assert np.array_equal(a.gallery, split_gallery_probe(labels, seed=3, impostor_fraction=0.25).gallery)
    assert not np.array_equal(a.gallery, split_gallery_probe(labels, seed=4, impostor_fraction=0.25).gallery)
    assert np.intersect1d(a.gallery, a.probe).size == 0
    assert np.union1d(a.gallery, a.probe).tolist() == list(range(80))
    gallery_ids = labels[a.gallery]
    assert np.unique(gallery_ids).size == gallery_ids.size == 15  # one image per known identity
    impostor_ids = np.setdiff1d(labels, gallery_ids)
    assert impostor_ids.size == 5
    assert np.isin(np.flatnonzero(np.isin(labels, impostor_ids)), a.probe).all()
    with pytest.raises(ValueError, match="impostor_fraction"):
        split_gallery_probe(labels, impostor_fraction=1.0)


def test_open_set_report_summarises_trials() -> None:
    emb = np.concatenate([GALLERY, PROBES])
    labels = np.concatenate([GALLERY_IDS, PROBE_IDS])
    trial = OpenSetTrial(gallery=np.arange(3), probe=np.arange(3, 11))
    rank2 = OpenSetTrial(gallery=np.arange(3), probe=np.array([3, 4, 6, 7, 8, 9, 10]))  # C probe (rank 2) dropped
    report = open_set_report(emb, labels, [trial, rank2], fars=(0.75, 0.1), ver_far=None)
    # Threshold 0.3 (3rd impostor). Trial 1: 0.9, 0.6, 0.35 of 4 -> 0.75; trial 2: all 3 genuine probes -> 1.0.
    assert report["dir@far=0.75,rank=1"] == pytest.approx(0.875)
    std = np.std([0.75, 1.0], ddof=1)
    assert report["dir@far=0.75,rank=1_std"] == pytest.approx(std)
    assert report["dir@far=0.75,rank=1_mean_minus_std"] == pytest.approx(0.875 - std)
    assert report["rank1"] == pytest.approx(0.875)
    assert report["dir@far=0.1,rank=1"] is None  # 4 impostors cannot measure 10 %
    js = report.to_json("openset/")
    assert js["openset/dir@far=0.1,rank=1_mean_minus_std"] == UNDEFINED
    assert "below 1/4" in js["openset/dir@far=0.1,rank=1_reason"]
    assert js["openset/impostor_probes"] == 4.0 and js["openset/trials"] == 2.0
    np.testing.assert_allclose(report["dir_far_fars"], BLUFR_OPEN_SET_FARS[BLUFR_OPEN_SET_FARS >= 0.25])


def _write_list(path: Path, trials: list[list[str]]) -> None:
    lines = [str(len(trials))]
    for trial in trials:
        lines.append(str(len(trial)))
        lines += [f"{i + 1}, {name}" for i, name in enumerate(trial)]
    path.write_text("\n".join(lines) + "\n")


def test_blufr_text_lists(tmp_path: Path) -> None:
    gallery = [["Aaron_Peirsol_0001.jpg", "Bo_Bee_0002.jpg"], ["Aaron_Peirsol_0002.jpg", "Bo_Bee_0001.jpg"]]
    probe = [["Aaron_Peirsol_0002.jpg", "Cy_Dee_0001.jpg"], ["Aaron_Peirsol_0001.jpg", "Cy_Dee_0001.jpg"]]
    _write_list(tmp_path / "gallery_set.txt", gallery)
    _write_list(tmp_path / "probe_set.txt", probe)
    lists = read_blufr_lists(tmp_path)
    assert lists.gallery == gallery and lists.probe == probe and lists.test is None
    files = lists.files
    assert files == sorted({*gallery[0], *gallery[1], *probe[0], *probe[1]})
    trials = blufr_trials(lists, files)
    assert [files[i] for i in trials[1].gallery] == gallery[1]
    assert blufr_identity("Aaron_Peirsol_0001.jpg") == "Aaron_Peirsol"
    with pytest.raises(ValueError, match="Name_NNNN"):
        blufr_identity("portrait.jpg")


def test_blufr_list_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gallery_set.txt"
    path.write_text("2\n2\n1, A_0001.jpg\n2, B_0001.jpg\n1\n")
    with pytest.raises(ValueError, match=r"gallery_set.txt:6: trial 2 promises 1 images"):
        read_blufr_list(path)
    path.write_text("1\n1\n1 A_0001.jpg\n")
    with pytest.raises(ValueError, match=r":3: expected 'index, filename'"):
        read_blufr_list(path)
    path.write_text("1\n1\n1, A_0001.jpg\nextra\n")
    with pytest.raises(ValueError, match=r":4: unexpected content"):
        read_blufr_list(path)
    _write_list(tmp_path / "gallery_set.txt", [["A_0001.jpg"]])
    _write_list(tmp_path / "probe_set.txt", [["A_0001.jpg"]])
    with pytest.raises(ValueError, match="in both gallery and probes"):
        read_blufr_lists(tmp_path)
    _write_list(tmp_path / "probe_set.txt", [["A_0002.jpg"], ["A_0003.jpg"]])
    with pytest.raises(ValueError, match="disagree on the number of trials"):
        read_blufr_lists(tmp_path)
