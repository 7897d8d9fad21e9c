"""Synthetic face dataset: on-disk layouts, protocol files, identity disjointness, determinism, ensure() semantics."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf
from PIL import Image

from facetrain.data.protocols import check_images_exist, read_lfw_pairs, read_ytf_splits
from facetrain.data.synthetic import SyntheticFaces
from facetrain.data.synthetic.pairs import pair_capacity_problem
from facetrain.data.synthetic.pool import run_jobs
from facetrain.data.synthetic.seeds import KIND_LFW, KIND_TRAIN, KIND_YTF, STREAM_IDENTITY, keyed_rng
from facetrain.data.synthetic.store import stale_reason
from facetrain.data.synthetic.traits import sample_identity
from facetrain.utils.rules import ConfigError
from facetrain.utils.schema import validate_config

SMALL = {
    "num_train_ids": 3,
    "images_per_train_id": 2,
    "num_lfw_ids": 30,
    "images_per_lfw_id": 3,
    "lfw_pairs_per_fold": 2,
    "num_ytf_ids": 20,
    "videos_per_ytf_id": 2,
    "frames_per_video": 3,
    "ytf_pairs_per_split": 2,
    "image_size": 48,
    "workers": 1,
}
NAME_RE = re.compile(r"^[A-Z][a-z]+_[A-Z][a-z]+$")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFaces:
    return SyntheticFaces(tmp_path_factory.mktemp("syn") / "data", **SMALL).ensure()


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------------


def test_layout_paths(small: SyntheticFaces) -> None:
    root = Path(small.root)
    assert small.train_root == root / "casia"
    assert small.lfw_root == root / "lfw"
    assert small.lfw_pairs == root / "pairs.txt"
    assert small.ytf_root == root / "ytf" / "aligned_images_DB"
    assert small.ytf_splits == root / "ytf" / "splits.txt"
    assert sorted(p.name for p in root.iterdir()) == ["casia", "lfw", "manifest.json", "pairs.txt", "ytf"]


def test_casia_tree(small: SyntheticFaces) -> None:
    ids = sorted(p.name for p in small.train_root.iterdir())
    assert ids == ["0000000", "0000001", "0000002"]
    for identity in ids:
        assert sorted(p.name for p in (small.train_root / identity).iterdir()) == ["001.jpg", "002.jpg"]


def test_lfw_tree(small: SyntheticFaces) -> None:
    names = sorted(p.name for p in small.lfw_root.iterdir())
    assert len(names) == 30 and names == small.lfw_names()
    assert all(NAME_RE.match(name) for name in names), names
    for name in names:
        files = sorted(p.name for p in (small.lfw_root / name).iterdir())
        assert files == [f"{name}_{k:04d}.jpg" for k in (1, 2, 3)]


def test_pairs_txt_raw_layout(small: SyntheticFaces) -> None:
    raw = small.lfw_pairs.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().split("\n")[:-1]
    assert lines[0] == "10\t2"
    assert len(lines) == 1 + 10 * 4
    counts = [len(line.split("\t")) for line in lines[1:]]
    assert counts == [3, 3, 4, 4] * 10  # each fold: matched block, then mismatched block


def test_lfw_pairs_semantics(small: SyntheticFaces) -> None:
    pairs = read_lfw_pairs(small.lfw_pairs)
    check_images_exist(pairs, small.lfw_root)
    assert len(pairs) == 40 and pairs.n_folds == 10
    np.testing.assert_array_equal(pairs.issame, [True, True, False, False] * 10)
    fold_of: dict[str, set[int]] = {}
    for a, b, same, fold in zip(pairs.left, pairs.right, pairs.issame, pairs.folds):
        person_a, person_b = a.split("/")[0], b.split("/")[0]
        assert (person_a == person_b) == same and a != b
        fold_of.setdefault(person_a, set()).add(int(fold))
        fold_of.setdefault(person_b, set()).add(int(fold))
    assert all(len(folds) == 1 for folds in fold_of.values()), "an identity appears in two folds"
    unordered = {frozenset(p) for p in zip(pairs.left, pairs.right)}
    assert len(unordered) == len(pairs), "duplicate pairs"


def test_ytf_tree(small: SyntheticFaces) -> None:
    names = sorted(p.name for p in small.ytf_root.iterdir())
    assert len(names) == 20 and names == small.ytf_names()
    assert all(NAME_RE.match(name) for name in names)
    for name in names:
        assert sorted(p.name for p in (small.ytf_root / name).iterdir()) == ["0", "1"]
        for v in (0, 1):
            files = sorted(p.name for p in (small.ytf_root / name / str(v)).iterdir())
            assert files == [f"aligned_detect_{v}.{f}.jpg" for f in (1, 2, 3)]


def test_ytf_splits(small: SyntheticFaces) -> None:
    lines = small.ytf_splits.read_text().splitlines()
    assert lines[0] == "split number, pair number, first name, second name, is same"
    rows = [[f.strip() for f in line.split(",")] for line in lines[1:]]
    assert all(len(r) == 5 for r in rows) and len(rows) == 40
    # Per split: pairs numbered 1..4, the first half same-person (1), the second half not (0).
    expected = [(split, k, "1" if k <= 2 else "0") for split in range(1, 11) for k in (1, 2, 3, 4)]
    assert [(int(r[0]), int(r[1]), r[4]) for r in rows] == expected
    pairs = read_ytf_splits(small.ytf_splits)
    check_images_exist(pairs, small.ytf_root)
    split_of: dict[str, set[int]] = {}
    for a, b, same, fold in zip(pairs.left, pairs.right, pairs.issame, pairs.folds):
        assert (a.split("/")[0] == b.split("/")[0]) == same and a != b
        for video in (a, b):
            split_of.setdefault(video.split("/")[0], set()).add(int(fold))
    assert all(len(s) == 1 for s in split_of.values()), "an identity appears in two splits"


def test_identities_disjoint(small: SyntheticFaces) -> None:
    assert not set(small.lfw_names()) & set(small.ytf_names())
    # The people themselves (trait vectors), not just their names, must differ between the three sets.
    traits = {
        kind: {sample_identity(keyed_rng(small.seed, STREAM_IDENTITY, kind, i)) for i in range(n)}
        for kind, n in ((KIND_TRAIN, 3), (KIND_LFW, 30), (KIND_YTF, 20))
    }
    assert len(traits[KIND_LFW]) == 30
    assert not traits[KIND_TRAIN] & traits[KIND_LFW]
    assert not traits[KIND_TRAIN] & traits[KIND_YTF]
    assert not traits[KIND_LFW] & traits[KIND_YTF]


def test_images_are_rgb_jpegs_of_the_right_size(small: SyntheticFaces) -> None:
    path = small.train_root / "0000001" / "002.jpg"
    assert path.read_bytes()[:2] == b"\xff\xd8"
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 48)
        decoded = np.asarray(im).astype(np.float64)
    rendered = small.render("train", 1, 1).astype(np.float64)
    # Channel order: the file matches the RGB rendering (up to JPEG loss), not its red/blue swap.
    error, swapped = np.abs(decoded - rendered).mean(), np.abs(decoded - rendered[..., ::-1]).mean()
    assert error < 8.0 and swapped > 3 * error, (error, swapped)
    for p in (small.lfw_root.rglob("*.jpg"), small.ytf_root.rglob("*.jpg")):
        img = cv2.imread(str(next(iter(p))))
        assert img is not None and img.shape == (48, 48, 3)


def test_video_frames_more_alike_than_videos(small: SyntheticFaces) -> None:
    within, across = [], []
    for name in small.ytf_names():
        f = [
            [
                cv2.imread(str(small.ytf_root / name / str(v) / f"aligned_detect_{v}.{k}.jpg")).astype(float)
                for k in (1, 2)
            ]
            for v in (0, 1)
        ]
        within.append(np.abs(f[0][0] - f[0][1]).mean())
        across.append(np.abs(f[0][0] - f[1][0]).mean())
    assert np.mean(within) < 0.5 * np.mean(across)


# ---------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_identical_bytes_regardless_of_workers(small: SyntheticFaces, tmp_path: Path) -> None:
    again = SyntheticFaces(tmp_path / "again", **{**SMALL, "workers": 2}).ensure()
    assert _tree_digest(Path(again.root)) == _tree_digest(Path(small.root))


def test_different_seed_differs(small: SyntheticFaces, tmp_path: Path) -> None:
    other = SyntheticFaces(tmp_path / "other", seed=1, **SMALL).ensure()
    a, b = _tree_digest(Path(small.root)), _tree_digest(Path(other.root))
    assert a["casia/0000000/001.jpg"] != b["casia/0000000/001.jpg"]
    assert a["pairs.txt"] != b["pairs.txt"]
    assert set(small.lfw_names()) != set(other.lfw_names())


# ---------------------------------------------------------------------------------------------------------------
# ensure()
# ---------------------------------------------------------------------------------------------------------------


def test_ensure_is_idempotent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = SyntheticFaces(tmp_path / "d", **SMALL)
    with caplog.at_level(logging.INFO, logger="facetrain.data.synthetic"):
        assert ds.ensure() is ds
    assert any("Generated synthetic faces" in r.message for r in caplog.records)
    before = _mtimes(Path(ds.root))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facetrain.data.synthetic"):
        ds.ensure()
        SyntheticFaces(tmp_path / "d", **{**SMALL, "workers": 2}).ensure()  # workers do not change the output
    assert _mtimes(Path(ds.root)) == before
    assert not caplog.records


def test_ensure_regenerates_when_parameters_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    SyntheticFaces(tmp_path / "d", **SMALL).ensure()
    with caplog.at_level(logging.WARNING, logger="facetrain.data.synthetic"):
        ds = SyntheticFaces(tmp_path / "d", **{**SMALL, "image_size": 40}).ensure()
    assert any("image_size: 48 -> 40" in r.message for r in caplog.records), caplog.text
    assert cv2.imread(str(ds.train_root / "0000000" / "001.jpg")).shape == (40, 40, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.lock"]  # no temporary directories left


def test_ensure_regenerates_without_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = SyntheticFaces(tmp_path / "d", **SMALL).ensure()
    ds.manifest_path.unlink()
    (ds.train_root / "0000000" / "001.jpg").unlink()  # a damaged dataset is rebuilt, not trusted
    with caplog.at_level(logging.WARNING, logger="facetrain.data.synthetic"):
        ds.ensure()
    assert "manifest.json is missing" in caplog.text
    assert (ds.train_root / "0000000" / "001.jpg").is_file() and ds.manifest_path.is_file()


def test_ensure_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="thesis.tex"):
        SyntheticFaces(root, **SMALL).ensure()
    assert (root / "thesis.tex").read_text() == "precious"


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: SyntheticFaces, base: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(SyntheticFaces, "_write_protocols", crash)
    with pytest.raises(KeyboardInterrupt):
        SyntheticFaces(tmp_path / "d", **SMALL).ensure()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.lock"]


def _ensure_and_report(root: str, counter: str) -> None:
    original = SyntheticFaces._write

    def counting(self: SyntheticFaces, base: Path) -> int:
        with open(counter, "a") as f:
            f.write("generated\n")
        return original(self, base)

    SyntheticFaces._write = counting  # type: ignore[method-assign]
    SyntheticFaces(root, **SMALL).ensure()


def test_concurrent_ensure_generates_once(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_ensure_and_report, args=(str(tmp_path / "d"), str(counter))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text().splitlines() == ["generated"]
    assert len(read_lfw_pairs(tmp_path / "d" / "pairs.txt")) == 40


_AFTER_OPENCV_THREADS = """
import json, sys
import cv2, numpy as np
# Start OpenCV's thread pool in this process, as an application that already processed images would.
x = np.random.rand(3000, 3000, 3).astype(np.float32)
cv2.GaussianBlur(x, (0, 0), 3.0)
from facetrain.data.synthetic import SyntheticFaces
SyntheticFaces(sys.argv[1], **json.loads(sys.argv[2])).ensure()
"""


def test_pool_generation_after_opencv_used_its_threads(tmp_path: Path) -> None:
    # Regression: forked workers could deadlock in a parallel OpenCV call once the parent had used OpenCV's thread
    # pool (a race: without the fix this hung in 2 of 3 runs of this size, 112 px images being what OpenCV
    # parallelises; with it, it takes about 2 s).
    sizes = {"num_train_ids": 40, "images_per_train_id": 10, "image_size": 112, "workers": 2}
    params = json.dumps({**SMALL, **sizes})
    proc = subprocess.Popen(
        [sys.executable, "-c", _AFTER_OPENCV_THREADS, str(tmp_path / "d"), params], start_new_session=True
    )
    try:
        assert proc.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: hung pool workers included
        proc.wait()
        pytest.fail("generation with a process pool hung after OpenCV had used its thread pool")
    assert len(read_lfw_pairs(tmp_path / "d" / "pairs.txt")) == 40


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("num_train_ids", 0, "an integer in [1, 1e+07]"),
        ("images_per_train_id", 1000, "an integer in [1, 999]"),
        ("num_lfw_ids", 19, "an integer >= 20"),
        ("images_per_lfw_id", 1, "an integer in [2, 9999]"),
        ("videos_per_ytf_id", 1, "an integer >= 2"),
        ("frames_per_video", 0, "an integer >= 1"),
        ("image_size", 16, "an integer >= 32"),
        ("jpeg_quality", 101, "an integer in [1, 100]"),
        ("workers", 0, "an integer >= 1"),
        ("seed", -1, "an integer >= 0"),
        ("num_train_ids", 2.5, "an integer in [1, 1e+07]"),
        ("workers", True, "an integer >= 1"),
    ],
)
def test_bad_argument_names_its_config_key_and_range(tmp_path: Path, name: str, value: object, rule: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"synthetic.{name}={value!r} is invalid: it must be {rule}")):
        SyntheticFaces(tmp_path / "d", **{**SMALL, name: value})
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lfw_pairs_per_fold", 10),  # 3 ids x 3 images per fold give only 9 matched pairs
        ("ytf_pairs_per_split", 3),  # 2 ids x 2 videos per split give only 2 same-person video pairs
    ],
)
def test_more_pairs_than_a_fold_holds_is_refused(tmp_path: Path, name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"synthetic: {name}={value} is more than the smallest fold")):
        SyntheticFaces(tmp_path / "d", **{**SMALL, name: value})
    SyntheticFaces(tmp_path / "d", **{**SMALL, name: value - 1})  # the largest that fits is accepted


def test_pair_capacity_known_answers() -> None:
    # 3 identities x 3 images: 3 * C(3, 2) = 9 same-identity and C(3, 2) * 3 * 3 = 27 different-identity pairs.
    assert pair_capacity_problem("p", 9, 3, 3) is None
    assert pair_capacity_problem("p", 10, 3, 3) == (
        "p=10 is more than the smallest fold can supply (3 identities x 3 items give 9 same-identity and 27 "
        "different-identity pairs); lower it or add identities/items"
    )
    # 2 identities x 5 images: 20 same-identity pairs but only 1 * 5 * 5 = 25 different ones; 4 x 2: 4 and 24.
    assert pair_capacity_problem("p", 20, 2, 5) is None and pair_capacity_problem("p", 5, 4, 2) is not None


def test_the_config_is_refused_with_the_same_message_before_anything_is_built(compose_cfg, tmp_path: Path) -> None:
    """The constructor's rules are the ones validate_config enforces on synthetic.* (key, range and value)."""
    cases = {
        "++synthetic.image_size=16": "synthetic.image_size=16 is invalid: it must be an integer >= 32",
        "++synthetic.lfw_pairs_per_fold=1000": "synthetic: lfw_pairs_per_fold=1000 is more than the smallest fold",
        "synthetic.ijbc.crop_size=100": "synthetic.ijbc.crop_size=100 is invalid: it must be an integer in [128, 1024]",
        "synthetic.tinyface.max_size=10": "synthetic.tinyface: max_size=10 must be >= min_size=16",
    }
    for override, message in cases.items():
        cfg = compose_cfg(override)
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config(cfg)
        node = OmegaConf.to_container(OmegaConf.select(cfg, override.strip("+").rsplit(".", 1)[0]), resolve=True)
        with pytest.raises(ConfigError, match=re.escape(message)):  # the Python API says the same
            get_object(node.pop("_target_"))(**node)
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------------------------


def test_stale_reason_names_what_changed(tmp_path: Path) -> None:
    expected = {"format_version": 1, "generator": "g", "params": {"a": 1, "b": 2}}
    assert stale_reason(tmp_path / "none", expected) == f"{tmp_path / 'none'} does not exist"
    assert stale_reason(tmp_path, expected) == f"{tmp_path / 'manifest.json'} is missing"
    (tmp_path / "manifest.json").write_text("{")
    assert stale_reason(tmp_path, expected).startswith(f"{tmp_path / 'manifest.json'} is unreadable")
    (tmp_path / "manifest.json").write_text(json.dumps({**expected, "format_version": 0}))
    assert stale_reason(tmp_path, expected) == "format version changed (0 -> 1)"
    (tmp_path / "manifest.json").write_text(json.dumps({**expected, "params": {"a": 1, "b": 3, "c": 4}}))
    assert stale_reason(tmp_path, expected) == "parameters changed (b: 3 -> 2, c: 4 -> None)"
    (tmp_path / "manifest.json").write_text(json.dumps(expected))
    assert stale_reason(tmp_path, expected) is None


def test_render_rejects_unknown_split(small: SyntheticFaces) -> None:
    with pytest.raises(ValueError, match="split"):
        small.render("casia", 0, 0)


_PARENT_PID = os.getpid()


def _crashing_job(value: int) -> int:
    """A render job that kills any worker process it runs in (a crash: mp.Pool would wait for its task forever)."""
    if os.getpid() != _PARENT_PID:
        os._exit(1)
    return value


def test_a_dying_render_worker_falls_back_to_this_process_instead_of_hanging() -> None:
    assert run_jobs(_crashing_job, list(range(1, 9)), workers=2) == sum(range(1, 9))
