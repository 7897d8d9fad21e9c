"""Hand-built known answers for open-set identification (BLUFR DIR@FAR), rank-1, VR and the BLUFR list reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import normalize

from facetrain.evaluation.openset import (
    BLUFR_OPEN_SET_FARS,
    OpenSetTrial,
    blufr_identity,
    blufr_trials,
    dir_at_far,
    dir_far_curve,
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
        # 4 impostors, best scores 0.7 > 0.5 > 0.3 > 0.2.
        (0.25, 1, 0.5),  # 1 false alarm allowed: threshold 0.5, rank-1 genuines above it: 0.9, 0.6
        (0.3, 1, 0.5),  # floor(0.3 * 4) = 1 false alarm: same operating point
        (0.5, 1, 0.75),  # threshold 0.3: 0.9, 0.6, 0.35 (0.4 is rank 2)
        (0.5, 2, 1.0),  # rank 2 admits the C probe (0.4 > 0.3)
        (0.75, 1, 0.75),  # threshold 0.2
        (1.0, 1, 0.75),  # every impostor accepted: DIR = rank-1 rate
    ],
)
def test_dir_at_far_known_answers(far: float, rank: int, expected: float) -> None:
    assert dir_at_far(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, far=far, rank=rank) == pytest.approx(expected)


def test_far_below_one_impostor_is_undefined() -> None:
    with pytest.raises(UndefinedMetricError, match="below 1/4"):
        dir_at_far(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, far=0.1)
    with pytest.raises(UndefinedMetricError, match="without impostor probes"):
        dir_at_far(GALLERY, GALLERY_IDS, PROBES[:4], PROBE_IDS[:4], far=0.5)


def test_dir_far_curve_exact_and_on_a_grid() -> None:
    fars, dirs = dir_far_curve(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS)
    np.testing.assert_allclose(fars, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(dirs, [0.5, 0.75, 0.75, 0.75])
    fars, dirs = dir_far_curve(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, fars=[0.3, 0.6], rank=2)
    np.testing.assert_allclose(dirs, [0.5, 1.0])
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
    for far in (1e-3, 1e-2, 0.1):
        expected = roc_metrics(scores, issame, fars=(far,))[f"tar@far={far:g}"]
        assert verification_rate(emb, labels, far=far, block=7) == pytest.approx(expected, abs=1e-12)
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
    report = open_set_report(emb, labels, [trial, rank2], fars=(0.5, 0.1), ver_far=None)
    # Trial 1: DIR@0.5 = 0.75; trial 2: genuine probes 0.9, 0.6, 0.35 all rank 1 above 0.3 -> 1.0.
    assert report["dir@far=0.5,rank=1"] == pytest.approx(0.875)
    std = np.std([0.75, 1.0], ddof=1)
    assert report["dir@far=0.5,rank=1_std"] == pytest.approx(std)
    assert report["dir@far=0.5,rank=1_mean_minus_std"] == pytest.approx(0.875 - std)
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
