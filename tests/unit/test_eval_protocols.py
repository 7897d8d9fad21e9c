"""Evaluation protocols and set loaders on their own: arrays in, report out; files in, index arrays out.

The protocols get hand-made sets and embeddings whose scores follow by hand; the loaders get tiny files written here.
The end-to-end behaviour of the callbacks (same numbers as before the split) is in test_callbacks.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from facetrain.data.protocols import PairList, write_lfw_pairs, write_ytf_splits
from facetrain.evaluation import sets
from facetrain.evaluation.openset import OpenSetTrial
from facetrain.evaluation.protocols import OpenSetProtocol, PairProtocol, VideoPairProtocol
from facetrain.evaluation.sets import IdentificationSet, PairSet, VideoPairSet


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pair_set(left: list[int], right: list[int], issame: list[bool], n_images: int) -> PairSet:
    n = len(left)
    pairs = PairList([f"l{i}" for i in range(n)], [f"r{i}" for i in range(n)], np.asarray(issame), np.arange(n) % 2)
    return PairSet(paths=np.asarray([f"img{i}" for i in range(n_images)]), pairs=pairs, left=np.asarray(left),
                   right=np.asarray(right))  # fmt: skip


# Four images at 0°, 10°, 90° and 100°: pairs (0,1) and (2,3) are the same person at cos 10°, the others differ.
ANGLES = np.deg2rad([0.0, 10.0, 90.0, 100.0])
EMB = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
PAIRS = _pair_set([0, 2, 0, 1], [1, 3, 2, 3], [True, True, False, False], 4)


def test_pair_protocol_scores_and_report_from_arrays() -> None:
    protocol = PairProtocol(fars=[0.5])
    report = protocol(EMB, PAIRS)
    expected = [np.cos(np.deg2rad(10)), np.cos(np.deg2rad(10)), 0.0, np.cos(np.deg2rad(90))]
    np.testing.assert_allclose(report["scores"], expected, atol=1e-12)
    assert report.values["acc"] == 1.0 and report.values["auc"] == 1.0
    assert report.values["tar@far=0.5"] == 1.0 and report.options["pairs"] == 4
    l2 = PairProtocol(score="l2")(EMB, PAIRS)
    np.testing.assert_allclose(l2["scores"], 2 - 2 * np.asarray(expected), atol=1e-12)
    assert protocol.options() == {"score": "cosine", "mean_subtraction": False}


def test_protocols_refuse_the_wrong_set_and_bad_options() -> None:
    with pytest.raises(TypeError, match=r"eval\.x: VideoPairProtocol needs a VideoPairSet, got PairSet"):
        VideoPairProtocol(name="x")(EMB, PAIRS)
    with pytest.raises(TypeError, match="OpenSetProtocol needs a IdentificationSet"):
        OpenSetProtocol()(EMB, PAIRS)
    with pytest.raises(ValueError, match=r"eval\.x\.fars=\[0\.0\] is invalid: .* each item a number in \(0, 1\]"):
        PairProtocol(fars=[0.0], name="x")
    with pytest.raises(ValueError, match=r"eval\.x\.aggregate='max' is invalid: it must be one of 'mean_embedding', "):
        VideoPairProtocol(aggregate="max", name="x")
    with pytest.raises(ValueError, match=r"eval\.x\.rank=0 is invalid: it must be an integer >= 1"):
        OpenSetProtocol(rank=0, name="x")
    with pytest.raises(ValueError, match=r"eval\.x\.ver_far=0 is invalid: it must be a number in \(0, 1\] or null"):
        OpenSetProtocol(ver_far=0, name="x")
    with pytest.raises(ValueError, match=r"eval\.x\.score='dot' is invalid: it must be one of 'cosine', 'l2'"):
        PairProtocol(score="dot", name="x")


def _video_set(first_k: int | None = None) -> VideoPairSet:
    # Videos: A = frames 0-1, B = frame 2, C = frames 3-5; pairs (A, B) same, (A, C) and (B, C) not.
    base = _pair_set([0, 0, 1], [1, 2, 2], [True, False, False], 6)
    return VideoPairSet(paths=base.paths, pairs=base.pairs, left=base.left, right=base.right,
                        frame_counts=np.asarray([2, 1, 3]), first_k=first_k)  # fmt: skip


FRAMES = _unit([[1, 0], [0, 1], [1, 1], [-1, 0], [-1, 0], [0, -1]])


def test_video_protocol_aggregates_frames_then_verifies() -> None:
    videos = {"A": FRAMES[0:2], "B": FRAMES[2:3], "C": FRAMES[3:6]}
    pairs = [("A", "B"), ("A", "C"), ("B", "C")]
    mean = VideoPairProtocol(aggregate="mean_embedding")(FRAMES, _video_set())
    unit = {v: _unit([f.mean(axis=0)])[0] for v, f in videos.items()}
    np.testing.assert_allclose(mean["scores"], [unit[a] @ unit[b] for a, b in pairs], atol=1e-12)
    pair_mean = VideoPairProtocol(aggregate="mean_pair_cosine")(FRAMES, _video_set())
    brute = [np.mean([x @ y for x in videos[a] for y in videos[b]]) for a, b in pairs]
    np.testing.assert_allclose(pair_mean["scores"], brute, atol=1e-12)
    assert mean.values["acc"] == 1.0
    # first_k scores the frames the set kept; a set loaded without first_k is refused.
    assert VideoPairProtocol(aggregate="first_k", k=2).options() == {
        "score": "cosine", "mean_subtraction": False, "aggregate": "first_k", "k": 2,
    }  # fmt: skip
    with pytest.raises(ValueError, match="needs a set loaded with first_k=2, got first_k=None"):
        VideoPairProtocol(aggregate="first_k", k=2, name="ytf")(FRAMES, _video_set())
    VideoPairProtocol(aggregate="first_k", k=2)(FRAMES, _video_set(first_k=2))


def test_open_set_protocol_from_arrays() -> None:
    # Identities 0 and 1 in the gallery (rows 0, 1); genuine probes rows 2, 3; impostor probes rows 4, 5 (identity 2)
    emb = _unit([[1, 0, 0], [0, 1, 0], [1, 0.1, 0], [0.1, 1, 0], [0, 0, 1], [0.1, 0.1, 1]])
    labels = np.asarray([0, 1, 0, 1, 2, 2])
    trial = OpenSetTrial(gallery=np.asarray([0, 1]), probe=np.asarray([2, 3, 4, 5]))
    evalset = IdentificationSet(paths=np.asarray([f"i{i}" for i in range(6)]), labels=labels, trials=[trial])
    report = OpenSetProtocol(fars=[0.5], ver_far=None)(emb, evalset)
    assert report.values["dir@far=0.5,rank=1"] == 1.0 and report.values["rank1"] == 1.0
    assert report.values["impostor_probes"] == 2.0


# --- loaders -----------------------------------------------------------------------------------------------------
def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((4, 4, 3), value, np.uint8))


def test_lfw_loader_embeds_each_image_once_and_indexes_the_pairs(tmp_path: Path) -> None:
    for name, n in [("Ann", 1), ("Ann", 2), ("Bob", 1)]:
        _png(tmp_path / name / f"{name}_{n:04d}.png", 10 * n)
    write_lfw_pairs(tmp_path / "pairs.txt", [([("Ann", 1, 2)], [("Ann", 1, "Bob", 1)])] * 2)
    got = sets.lfw_pairs(str(tmp_path), str(tmp_path / "pairs.txt"), ext="png")
    assert [Path(p).name for p in got.paths] == ["Ann_0001.png", "Ann_0002.png", "Bob_0001.png"]
    assert got.left.tolist() == [0, 0, 0, 0] and got.right.tolist() == [1, 2, 1, 2]
    assert got.pairs.issame.tolist() == [True, False, True, False] and got.decode is None
    (tmp_path / "Bob" / "Bob_0001.png").unlink()
    with pytest.raises(FileNotFoundError, match="Bob_0001"):
        sets.lfw_pairs(str(tmp_path), str(tmp_path / "pairs.txt"), ext="png")


def test_bin_loader_pairs_consecutive_images_and_decodes(tmp_path: Path) -> None:
    images = [cv2.imencode(".png", np.full((4, 4, 3), v, np.uint8))[1].tobytes() for v in range(8)]
    pack = tmp_path / "x.bin"
    pack.write_bytes(pickle.dumps((images, [True, False, True, False])))
    got = sets.insightface_bin(str(pack), n_folds=2)
    assert got.left.tolist() == [0, 2, 4, 6] and got.right.tolist() == [1, 3, 5, 7]
    assert got.pairs.folds.tolist() == [0, 0, 1, 1] and int(got.decode(5)[0, 0, 0]) == 5
    with pytest.raises(ValueError, match=r"eval\.x\.n_folds must be in \[2, 4\]"):
        sets.insightface_bin(str(pack), n_folds=5, name="x")


def test_ytf_loader_frame_runs_and_selection(tmp_path: Path) -> None:
    videos = ["Ann/1", "Ann/2", "Bob/1"]
    for video, frames in zip(videos, (3, 2, 4)):
        for f in range(1, frames + 1):
            _png(tmp_path / "db" / video / f"aligned_detect_{video[-1]}.{f}.png", f)
    rows = [(split, 1, videos[0], videos[1], 1) for split in (1, 2)]
    rows += [(split, 2, videos[0], videos[2], 0) for split in (1, 2)]
    write_ytf_splits(tmp_path / "splits.txt", sorted(rows))
    root, splits = str(tmp_path / "db"), str(tmp_path / "splits.txt")
    full = sets.ytf_folders(root, splits, n_splits=2)
    assert full.frame_counts.tolist() == [3, 2, 4] and len(full) == 9 and full.options == {"frames_per_video": "all"}
    assert full.left.tolist() == [0, 0, 0, 0] and full.right.tolist() == [1, 2, 1, 2]
    first = sets.ytf_folders(root, splits, n_splits=2, first_k=2)
    assert first.frame_counts.tolist() == [2, 2, 2] and first.first_k == 2 and first.options == {}
    with pytest.raises(ValueError, match=r"eval\.ytf: aggregate=first_k .* set frames_per_video=null"):
        sets.ytf_folders(root, splits, n_splits=2, frames_per_video=2, first_k=2)


def test_identity_folder_loader_trials_and_missing_root(tmp_path: Path) -> None:
    for identity in range(4):
        for n in range(2):
            _png(tmp_path / f"id{identity}" / f"{n}.png", n)
    got = sets.identity_folders(str(tmp_path), trials=3, seed=1)
    assert len(got) == 8 and len(got.trials) == 3 and got.options["protocol"] == "generic"
    assert got.options["seed"] == 1 and got.options["impostor_fraction"] == 0.5
    with pytest.raises(FileNotFoundError, match=r"eval\.o\.root="):
        sets.identity_folders(str(tmp_path / "missing"), name="o")
