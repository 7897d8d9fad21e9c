"""TinyFace: the rank-k protocol against a brute-force sort, and the reader on .mat fixtures in the official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facetrain.data.tinyface import read_mat_list, read_tinyface
from facetrain.evaluation.tinyface import DISTRACTOR_LABEL, cmc, mate_ranks, tinyface_report

# --- protocol ---------------------------------------------------------------------------------------------------------


def _brute_force_rank(scores: np.ndarray, mate: np.ndarray) -> int:
    """AdaFace's DIR_FAR rank for one probe: sort the gallery by descending score, non-mates first among equals."""
    if not mate.any():
        return 0
    order = sorted(range(len(scores)), key=lambda g: (-scores[g], bool(mate[g])))
    return next(position for position, g in enumerate(order, start=1) if mate[g])


def _brute_force_report(probes, probe_labels, gallery, gallery_labels, ranks) -> dict[int, float]:
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    found = []
    for p in range(len(probes)):
        scores = [float(np.dot(unit(probes)[p], unit(gallery)[g])) for g in range(len(gallery))]
        found.append(_brute_force_rank(np.array(scores), gallery_labels == probe_labels[p]))
    found = [r for r in found if r > 0]
    return {k: sum(r <= k for r in found) / len(found) for k in ranks}


def test_known_answer() -> None:
    """Probe 0: mate first; probe 1: one distractor and one other identity above its mate (rank 3)."""
    gallery = np.eye(4)
    labels = np.array([1, 2, DISTRACTOR_LABEL, DISTRACTOR_LABEL])
    probes = np.array([[1.0, 0.2, 0.1, 0.0], [0.9, 0.3, 0.95, 0.0]])
    ranks = mate_ranks(probes, [1, 2], gallery, labels)
    assert ranks.tolist() == [1, 3]
    assert cmc(ranks, (1, 2, 3)) == {1: 0.5, 2: 0.5, 3: 1.0}


def test_ties_count_against_the_probe_and_mateless_probes_are_left_out() -> None:
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ranks = mate_ranks(np.array([[1.0, 0.0], [0.0, 1.0]]), [7, 8], gallery, [7, 9, 3])
    assert ranks.tolist() == [2, 0]  # the non-mate tie beats probe 0; probe 1 (label 8) has no mate
    report = tinyface_report(np.array([[1.0, 0.0], [0.0, 1.0]]), [7, 8], gallery, [7, 9, 3], ranks=(1, 2))
    assert report["rank1"] == 0.0 and report["rank2"] == 1.0
    assert report.options["probes"] == 1 and report.options["probes_without_mate"] == 1


@pytest.mark.parametrize("quantise", [False, True])
def test_report_equals_brute_force(quantise: bool) -> None:
    rng = np.random.default_rng(3)
    n_ids, dim = 12, 16  # sign vectors of 16 values have norm 4: exact unit vectors, exact ties
    centres = rng.normal(size=(n_ids, dim))
    match_labels = np.repeat(np.arange(n_ids), 2)
    probe_labels = rng.integers(0, n_ids, 40)
    match = centres[match_labels] + rng.normal(scale=1.2, size=(len(match_labels), dim))
    probes = centres[probe_labels] + rng.normal(scale=1.2, size=(len(probe_labels), dim))
    distractors = rng.normal(size=(30, dim))
    if quantise:  # coarse vectors: many exactly tied scores
        match, probes, distractors = (np.sign(x) for x in (match, probes, distractors))
    report = tinyface_report(probes, probe_labels, match, match_labels, distractors, ranks=(1, 5, 20))
    gallery, gallery_labels = np.concatenate([match, distractors]), np.r_[match_labels, np.full(30, DISTRACTOR_LABEL)]
    expected = _brute_force_report(probes, probe_labels, gallery, gallery_labels, (1, 5, 20))
    assert {k: report[f"rank{k}"] for k in (1, 5, 20)} == pytest.approx(expected, abs=1e-12)
    assert 0.0 < report["rank1"] < report["rank20"] <= 1.0  # the data exercises more than one rank
    assert report.options["distractors"] == 30 and len(report["cmc"]) == 20
    # Blocks of probes give the same ranks as one block.
    one = mate_ranks(probes, probe_labels, gallery, gallery_labels, block=1000)
    assert np.array_equal(one, mate_ranks(probes, probe_labels, gallery, gallery_labels, block=7))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="row 1 is zero, which has no direction"):
        mate_ranks(np.array([[1.0, 0.0], [0.0, 0.0]]), [1, 2], np.eye(2), [1, 2])
    with pytest.raises(ValueError, match="one label per embedding row"):
        mate_ranks(np.eye(2), [1], np.eye(2), [1, 2])
    with pytest.raises(ValueError, match="no probe has a mate"):
        tinyface_report(np.eye(2), [5, 6], np.eye(2), [1, 2])
    with pytest.raises(ValueError, match="distractor label"):
        tinyface_report(np.eye(2), [1, 2], np.eye(2), [1, DISTRACTOR_LABEL])


# --- reader -----------------------------------------------------------------------------------------------------------


def _cell(names: list[str]) -> np.ndarray:
    """A MATLAB N×1 cell array of strings, as in the official .mat files."""
    cell = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        cell[i, 0] = name
    return cell


def _write_tinyface(root: Path, distractors: int = 2) -> Path:
    testing = root / "tinyface" / "Testing_Set"
    files = {"Gallery_Match": ["1_1.jpg", "1_2.jpg", "2_1.jpg"], "Probe": ["1_3.jpg", "2_2.jpg"]}
    files["Gallery_Distractor"] = [f"d_{i}.jpg" for i in range(distractors)]
    for folder, names in files.items():
        (testing / folder).mkdir(parents=True)
        for name in names:
            (testing / folder / name).write_bytes(b"\xff\xd8")
    ids = lambda names: np.array([[int(n.split("_")[0])] for n in names], dtype=np.float64)  # noqa: E731
    scipy.io.savemat(
        testing / "gallery_match_img_ID_pairs.mat",
        {"gallery_set": _cell(files["Gallery_Match"]), "gallery_ids": ids(files["Gallery_Match"])},
    )
    scipy.io.savemat(
        testing / "probe_img_ID_pairs.mat", {"probe_set": _cell(files["Probe"]), "probe_ids": ids(files["Probe"])}
    )
    return root / "tinyface"


def test_reader_official_layout(tmp_path: Path) -> None:
    root = _write_tinyface(tmp_path)
    data = read_tinyface(root)
    testing = root / "Testing_Set"
    assert data.probe_paths == [testing / "Probe" / "1_3.jpg", testing / "Probe" / "2_2.jpg"]
    assert data.probe_labels.tolist() == [1, 2] and data.probe_labels.dtype == np.int64
    assert [p.name for p in data.match_paths] == ["1_1.jpg", "1_2.jpg", "2_1.jpg"]
    assert data.match_labels.tolist() == [1, 1, 2]
    assert [p.name for p in data.distractor_paths] == ["d_0.jpg", "d_1.jpg"]
    # An aligned copy elsewhere (AdaFace's aligned_pad_0.1_pad_high) holds the images; the lists stay.
    aligned = tmp_path / "aligned"
    (testing).rename(aligned)
    (root / "Testing_Set").mkdir()
    for mat in ("gallery_match_img_ID_pairs.mat", "probe_img_ID_pairs.mat"):
        (aligned / mat).rename(root / "Testing_Set" / mat)
    assert read_tinyface(root, image_root=aligned).probe_paths[0] == aligned / "Probe" / "1_3.jpg"


def test_reader_char_matrix_names(tmp_path: Path) -> None:
    path = tmp_path / "probe_img_ID_pairs.mat"
    scipy.io.savemat(path, {"probe_set": np.array(["a_1.jpg", "b_22.jpg"]), "probe_ids": np.array([3, 4])})
    assert read_mat_list(path, "probe_set", "probe_ids")[0] == ["a_1.jpg", "b_22.jpg"]


def test_reader_bad_inputs(tmp_path: Path) -> None:
    root = _write_tinyface(tmp_path)
    testing = root / "Testing_Set"
    (testing / "Probe" / "2_2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"probe_img_ID_pairs.mat: probe_set\[1\] = '2_2.jpg' is listed"):
        read_tinyface(root)
    scipy.io.savemat(testing / "probe_img_ID_pairs.mat", {"probe_set": _cell(["1_3.jpg"])})
    with pytest.raises(ValueError, match="probe_img_ID_pairs.mat: variable 'probe_ids' is missing"):
        read_tinyface(root)
    scipy.io.savemat(testing / "probe_img_ID_pairs.mat", {"probe_set": _cell(["1_3.jpg"]), "probe_ids": [[1.5]]})
    with pytest.raises(ValueError, match=r"probe_ids\[0\] = 1.5 is not an integer"):
        read_tinyface(root)
    scipy.io.savemat(testing / "probe_img_ID_pairs.mat", {"probe_set": _cell(["1_3.jpg"]), "probe_ids": [[1, 2]]})
    with pytest.raises(ValueError, match="probe_set has 1 entries but probe_ids has 2"):
        read_tinyface(root)
    (testing / "gallery_match_img_ID_pairs.mat").unlink()
    with pytest.raises(FileNotFoundError, match="gallery_match_img_ID_pairs.mat does not exist"):
        read_tinyface(root)


def test_reader_missing_distractor_folder(tmp_path: Path) -> None:
    root = _write_tinyface(tmp_path)
    for f in (root / "Testing_Set" / "Gallery_Distractor").iterdir():
        f.unlink()
    (root / "Testing_Set" / "Gallery_Distractor").rmdir()
    with pytest.raises(FileNotFoundError, match="Gallery_Distractor does not exist"):
        read_tinyface(root)
