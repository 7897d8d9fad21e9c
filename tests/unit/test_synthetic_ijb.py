"""Synthetic IJB-C- and TinyFace-format sets: landmark geometry, the written layouts, validation and config wiring."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from facetrain.data.align import align_face
from facetrain.data.ijb import aligned_face, read_ijb
from facetrain.data.synthetic.ijb import GALLERY_CSV_HEADER, SyntheticIjbc, face_landmarks
from facetrain.data.synthetic.jobs import Item, item_nuisance
from facetrain.data.synthetic.render import render_face_image
from facetrain.data.synthetic.seeds import KIND_IJBC, STREAM_IDENTITY, keyed_rng
from facetrain.data.synthetic.tinyface import SyntheticTinyFace
from facetrain.data.synthetic.traits import sample_identity
from facetrain.data.tinyface import read_tinyface
from facetrain.utils.rules import ConfigError

CROP = 160


def _identity(i: int):
    return sample_identity(keyed_rng(0, STREAM_IDENTITY, KIND_IJBC, i))


def _clean(nz, **extra):
    """The same pose and expression without the imaging noise, so pixel differences are geometry only."""
    return replace(nz, noise=0.0, blur=0.0, light_strength=0.0, jpeg_q=0, occlude=False, **extra)


def _marked(ident, nz, trait: str, colours) -> np.ndarray:
    """Pixels that change when one trait's colour changes: where the renderer drew that feature."""
    a, b = (render_face_image(replace(ident, **{trait: c}), nz, CROP).astype(int) for c in colours)
    return np.abs(a - b).sum(axis=2)


@pytest.mark.parametrize("i", range(4))
def test_landmarks_sit_on_the_drawn_eyes_and_lip_corners(i: int) -> None:
    """Independent of face_landmarks' projection: the iris and the lips are found by recolouring them."""
    ident = replace(_identity(i), glasses=0)
    nz = _clean(item_nuisance(0, KIND_IJBC, i, Item("x", 0), loose=True), gaze=0.0, eye_open=1.0, mouth_open=0.0)
    points = face_landmarks(ident, nz, CROP)
    diff = _marked(ident, nz, "iris", ((255.0, 0.0, 0.0), (0.0, 0.0, 255.0)))
    ys, xs = np.nonzero(diff > 30)
    left = xs < points[:2, 0].mean()
    for side, mask in enumerate((left, ~left)):
        centre = np.average(np.stack([xs[mask], ys[mask]], 1), axis=0, weights=diff[ys[mask], xs[mask]])
        assert np.linalg.norm(centre - points[side]) < 0.6, f"eye {side} is off the drawn iris"
    diff = _marked(ident, nz, "lips", ((0.0, 255.0, 0.0), (255.0, 0.0, 255.0)))
    ys, xs = np.nonzero(diff > 60)
    lips = np.stack([xs, ys], 1).astype(float)
    axis = (points[4] - points[3]) / np.linalg.norm(points[4] - points[3])
    along = (lips - points[3:].mean(axis=0)) @ axis
    # The lips taper to nothing at the corners, so the last drawn pixel lies up to ~1.7 px inside the corner.
    assert np.linalg.norm(lips[along.argmin()] - points[3]) < 2.0
    assert np.linalg.norm(lips[along.argmax()] - points[4]) < 2.0


@pytest.mark.parametrize("i", range(4))
def test_nose_landmark_is_the_lowest_point_of_the_drawn_nose(i: int) -> None:
    """With pitch 0 the wedge apex is the nose's lowest point along the face's vertical axis (perpendicular to the
    eye line); the mouth is moved away and beard and mole removed, so the only non-skin pixels there are the nose."""
    ident = _identity(i)
    ident = replace(ident, glasses=0, beard=0, mole=None, mouth_y=ident.mouth_y + 0.3)
    nz = _clean(item_nuisance(0, KIND_IJBC, i, Item("x", 1), loose=True), pitch=0.0, gain=1.0, offset=0.0)
    nz = replace(nz, cast=(1.0, 1.0, 1.0))
    points = face_landmarks(ident, nz, CROP)
    image = render_face_image(ident, nz, CROP).astype(int)
    ys, xs = np.nonzero(np.any(np.abs(image - np.round(ident.skin)) > 3, axis=2))
    across = (points[1] - points[0]) / np.linalg.norm(points[1] - points[0])
    down = np.array([-across[1], across[0]])
    rel = np.stack([xs, ys], 1) - points[2]
    near = (np.abs(rel @ across) < 4) & (np.abs(rel @ down) < 6)
    # Anti-aliased edge pixels reach up to ~1.5 px past the polygon; 3 px off (0.1 face units) fails either way.
    assert -0.5 < float((rel[near] @ down).max()) < 2.0


def _aligned_error(i: int, media: int, offset: np.ndarray, other: int | None = None) -> float:
    """Mean absolute difference, over the inner face, of an aligned loose crop and an aligned 112 px rendering."""
    ident = _identity(i)
    item = Item("x", media)
    loose = _clean(item_nuisance(0, KIND_IJBC, i, item, loose=True))
    crop = render_face_image(ident, loose, CROP)
    aligned = align_face(crop, face_landmarks(ident, loose, CROP) + offset).astype(float)
    j = i if other is None else other
    ref_nz = _clean(item_nuisance(0, KIND_IJBC, j, item, loose=False))
    ref = align_face(render_face_image(_identity(j), ref_nz, 112), face_landmarks(_identity(j), ref_nz, 112))
    inner = (slice(40, 100), slice(30, 82))
    return float(np.abs(aligned[inner] - ref.astype(float)[inner]).mean())


@pytest.mark.parametrize(("i", "media"), [(0, 0), (1, 2), (4, 1)])
def test_aligned_loose_crop_matches_the_same_faces_aligned_rendering(i: int, media: int) -> None:
    """norm_crop-style alignment of a loose crop from its listed landmarks gives the face of the 112 px rendering
    (same identity, pose and expression; other crop size, scale and offset); landmarks 2 px off do not."""
    exact = _aligned_error(i, media, np.zeros(2))
    assert exact < 8.0
    assert _aligned_error(i, media, np.array([2.0, 0.0])) > 2 * exact
    assert _aligned_error(i, media, np.array([0.0, 2.0])) > 1.5 * exact
    assert _aligned_error(i, media, np.zeros(2), other=i + 7) > 3 * exact


def _read_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_ijbc_layout(tmp_path: Path) -> None:
    gen = SyntheticIjbc(
        tmp_path / "ijbc", num_ids=4, templates_per_id=3, max_media_per_template=2, video_percent=50,
        frames_per_run=2, impostor_pairs=10, crop_size=128, workers=1,
    ).ensure()  # fmt: skip
    root = tmp_path / "ijbc"
    faces = _read_rows(gen.meta("face_tid_mid.txt"))
    landmarks = _read_rows(gen.meta("name_5pts_score.txt"))
    assert [f[0] for f in faces] == [f"{n}.jpg" for n in range(1, len(faces) + 1)] == [r[0] for r in landmarks]
    assert sorted(p.name for p in (root / "loose_crop").iterdir()) == sorted(f[0] for f in faces)
    image = cv2.imread(str(root / "loose_crop" / "1.jpg"))
    assert image.shape == (128, 128, 3)
    values = np.array([r[1:] for r in landmarks], dtype=float)
    assert values.shape[1] == 11 and np.all((values[:, :10] > 0) & (values[:, :10] < 128))
    assert np.all((values[:, 10] > 0.3) & (values[:, 10] < 1.0))
    medias = defaultdict(set)
    frames = defaultdict(int)
    for _, tid, mid in faces:
        medias[tid].add(mid)
        frames[mid] += 1
    assert max(len(m) for m in medias.values()) > 1 and max(frames.values()) == 2  # multi-media, frame runs
    # 1:N lists: header, disjoint gallery subjects, one gallery template per subject, probes outside galleries.
    subject_of, lists = {}, {}
    for name in ("1N_gallery_G1.csv", "1N_gallery_G2.csv", "1N_probe_mixed.csv"):
        with open(gen.meta(name), newline="") as f:
            rows = list(csv.reader(f))
        assert ",".join(rows[0]) == GALLERY_CSV_HEADER
        lists[name] = {r[0] for r in rows[1:]}
        subject_of.update({r[0]: r[1] for r in rows[1:]})
    g1, g2, probes = lists.values()
    assert {subject_of[t] for t in g1} == {"1", "2"} and {subject_of[t] for t in g2} == {"3", "4"}
    assert len(g1) == len(g2) == 2 and len(probes) == 8 and not (g1 | g2) & probes
    assert set(subject_of) == set(medias)
    pairs = _read_rows(gen.meta("template_pair_label.txt"))
    labels = [int(p[2]) for p in pairs]
    assert all((subject_of[a] == subject_of[b]) == (s == "1") for a, b, s in pairs)
    assert sum(labels) == 4 * 3 and len(labels) - sum(labels) == 10
    # Reused while the parameters match; a changed size regenerates it.
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert replace(gen, workers=2).ensure() and (root / "manifest.json").stat().st_mtime_ns == stamp
    replace(gen, impostor_pairs=5).ensure()
    assert len(_read_rows(gen.meta("template_pair_label.txt"))) == 12 + 5


def test_ijbc_is_read_and_aligned_by_the_ijb_reader(tmp_path: Path) -> None:
    """facetrain.data.ijb (InsightFace layout) reads the set; its aligned faces are 112×112 and face-like centred."""
    gen = SyntheticIjbc(tmp_path / "ijbc", num_ids=4, templates_per_id=2, frames_per_run=2, crop_size=128, workers=1)
    gen.ensure()
    ijb = read_ijb(gen.root, "ijbc")
    faces = _read_rows(gen.meta("face_tid_mid.txt"))
    assert ijb.images == [f[0] for f in faces] and ijb.templates.tolist() == [int(f[1]) for f in faces]
    assert ijb.landmarks.shape == (len(faces), 5, 2) and np.all((ijb.faceness > 0.3) & (ijb.faceness < 1))
    assert sorted(ijb.galleries) == ["G1", "G2"] and ijb.probe is not None
    assert set(ijb.galleries["G1"][0]).isdisjoint(ijb.probe[0]) and ijb.pair_labels.sum() == 4
    assert aligned_face(ijb, 0).shape == (112, 112, 3)


def test_tinyface_layout_is_read_by_the_reader(tmp_path: Path) -> None:
    SyntheticTinyFace(tmp_path / "tf", num_ids=3, num_distractors=2, min_size=12, max_size=20, workers=1).ensure()
    data = read_tinyface(tmp_path / "tf")
    assert data.probe_labels.tolist() == [1, 1, 2, 2, 3, 3] and data.match_labels.tolist() == [1, 1, 2, 2, 3, 3]
    assert len(data.distractor_paths) == 2
    names = [p.stem for p in [*data.probe_paths, *data.match_paths, *data.distractor_paths]]
    assert len(set(names)) == len(names)  # AdaFace keys images by file stem across the three folders
    assert all(int(p.name.split("_")[0]) == label for p, label in zip(data.probe_paths, data.probe_labels))
    sides = {cv2.imread(str(p)).shape[0] for p in [*data.probe_paths, *data.match_paths]}
    assert min(sides) >= 12 and max(sides) <= 20 and len(sides) > 1


def test_a_folder_it_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "mine.txt").write_text("keep")
    # Not even beside a manifest.json: only the set's own entries may be replaced.
    (tmp_path / "tf" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds files that are not a synthetic dataset \(mine.txt\); refusing"):
        SyntheticTinyFace(tmp_path / "tf", num_ids=2, num_distractors=0, workers=1).ensure()
    assert (tmp_path / "tf" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("cls", "key", "value", "message"),
    [
        (
            SyntheticIjbc,
            "crop_size",
            112,
            "synthetic.ijbc.crop_size=112 is invalid: it must be an integer in [128, 1024]",
        ),
        (
            SyntheticIjbc,
            "templates_per_id",
            1,
            "synthetic.ijbc.templates_per_id=1 is invalid: it must be an integer >= 2",
        ),
        (SyntheticIjbc, "video_percent", 0.5, "synthetic.ijbc.video_percent=0.5 is invalid: it must be an integer in"),
        (
            SyntheticTinyFace,
            "max_size",
            113,
            "synthetic.tinyface.max_size=113 is invalid: it must be an integer in [8, 112]",
        ),
        (SyntheticTinyFace, "max_size", 10, "synthetic.tinyface: max_size=10 must be >= min_size=16"),
    ],
)
def test_bad_sizes_name_the_key(cls, key: str, value, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        cls(tmp_path / "x", **{key: value})


def test_config_wiring(compose_cfg, tmp_path: Path) -> None:
    """The synthetic world generates the sets from configs/synthetic; the real world points at paths.* only."""
    cfg = compose_cfg()
    gen = instantiate(cfg.world.ijbc.source)
    assert isinstance(gen, SyntheticIjbc) and Path(cfg.world.ijbc.root) == gen.root == tmp_path / "data/synthetic_ijbc"
    assert isinstance(instantiate(cfg.world.tinyface.source), SyntheticTinyFace)
    assert isinstance(instantiate(cfg.synthetic).ijbc, SyntheticIjbc)  # constructing generates nothing
    assert not gen.root.exists()
    real = compose_cfg("world=real")
    assert real.world.ijbc.source is None and real.world.ijbc.root == real.paths.ijbc
    assert real.world.tinyface.root == str(tmp_path / "data/tinyface")
