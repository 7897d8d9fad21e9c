"""Synthetic IJB-C-format and TinyFace-format evaluation sets, drawn by the renderer of :mod:`facetrain.data.synthetic`.

Both are written in the real on-disk layouts, so the readers and protocols of the real benchmarks run on them:

* :class:`SyntheticIjbc`: InsightFace's IJB packaging (``recognition/_evaluation_/ijb/``):
  ``loose_crop/<n>.jpg`` loose, *unaligned* crops (``crop_size`` px, larger than 112, the face smaller and off-centre),
  ``meta/ijbc_face_tid_mid.txt`` (``image template media``), ``meta/ijbc_name_5pts_score.txt`` (image, five (x, y)
  landmarks from the renderer's geometry, faceness score), ``meta/ijbc_template_pair_label.txt`` (``t1 t2 label``)
  and the 1:N lists ``meta/ijbc_1N_gallery_G1.csv``, ``meta/ijbc_1N_gallery_G2.csv``, ``meta/ijbc_1N_probe_mixed.csv``.
  A template is several media; a media is a still or a short run of video frames (one pose draw plus smooth
  motion, as the YTF-format videos). Each identity has one gallery template (G1 for the first half of the
  identities, G2 for the second) and ``templates_per_id - 1`` probe templates, so every probe is mated in one gallery
  and non-mated in the other, as in IJB-C's mixed-media protocol.
* :class:`SyntheticTinyFace`: the TinyFace test layout of :mod:`facetrain.data.tinyface` (``Testing_Set/Probe``,
  ``Gallery_Match``, ``Gallery_Distractor`` and the two ``.mat`` lists), every image rendered at 112 px and shrunk
  to a native low resolution (TinyFace's faces average about 20×16 px).

Identities are disjoint from the training, LFW and YTF identities (their own ``kind`` in the seed key). Generation
reuses synthetic.py's job runner, lock and atomic swap: on first use (the evaluation set's ``source``), under a lock,
into a temporary sibling renamed into place, with a ``manifest.json`` whose mismatch regenerates the set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io

from facetrain.data.synthetic import (
    _STREAM_IDENTITY,
    _STREAM_IMAGE,
    _STREAM_MOTION,
    _STREAM_VIDEO,
    _file_lock,
    _frame_nuisance,
    _Identity,
    _Nuisance,
    _Painter,
    _rng,
    _run_jobs,
    _sample_identity,
    _sample_nuisance,
    _swap_in,
    render_face_image,
)

__all__ = ["GALLERY_CSV_HEADER", "SyntheticIjbc", "SyntheticTinyFace", "face_landmarks", "faceness_score"]

logger = logging.getLogger(__name__)

# Bump whenever the rendering or the layout changes, so existing sets are regenerated instead of reused.
FORMAT_VERSION = 1
# Seed-key kinds after synthetic.py's train/LFW/YTF (0, 1, 2): these identities are new people.
KIND_IJBC, KIND_TINYFACE, KIND_TINYFACE_DISTRACTOR = 3, 4, 5
# Streams after synthetic.py's (0..5): the loose-crop placement of a media, the protocol draws.
_STREAM_PLACEMENT, _STREAM_PROTOCOL = 6, 7
#: Header of the IJB-C 1:N template lists (IJB-C ``protocols/test2``; InsightFace reads columns 0 and 1).
GALLERY_CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"
LOOSE_SCALE = (0.7, 0.95)  # face size in a loose crop relative to the 112 px rendering of the same crop size
LOOSE_SHIFT = 0.08  # extra off-centre shift, fraction of the crop


def face_landmarks(ident: _Identity, nz: _Nuisance, size: int) -> np.ndarray:
    """The five ArcFace landmarks of a rendered face, in pixels (pixel centres at integers, as ``cv2`` draws).

    Points of the drawing code projected through the same head pose and image transform as the renderer: the eye
    centres (``_draw_eyes``' almond centres), the nose tip (the ``_draw_nose`` wedge apex at ``nose_depth``) and
    the lip corners (``_draw_mouth`` at ``x = ±mouth_w``, where the smile bends them).

    Returns:
        ``5×2`` (x, y): image-left eye, image-right eye, nose, image-left and image-right mouth corner.
    """
    p = _Painter(np.empty((size, size, 3), np.uint8), ident, nz)
    i = ident
    corner_y = i.mouth_y - (nz.smile + i.mouth_curve)
    eyes = p.surface(np.array([[-i.eye_dx, i.eye_y], [i.eye_dx, i.eye_y]]))
    nose = p.surface(np.array([[0.0, i.eye_y + i.nose_len + 0.06]]), i.nose_depth)
    mouth = p.surface(np.array([[-i.mouth_w, corner_y], [i.mouth_w, corner_y]]), 0.03)
    return np.concatenate([eyes, nose, mouth])


def faceness_score(nz: _Nuisance, rng: np.random.Generator) -> float:
    """A plausible detector confidence: near 1 for a frontal, sharp, unoccluded face, lower for hard ones."""
    score = 0.995 - 0.45 * abs(nz.yaw) - 0.5 * abs(nz.pitch) - 0.06 * nz.blur - 0.25 * nz.occlude
    return float(np.clip(score + rng.normal(0.0, 0.02), 0.3, 0.999))


@dataclass(frozen=True)
class _Item:
    """One image of a job: its file name and the (media, frame) key of its nuisance draw."""

    name: str
    media: int
    frame: int = 0
    video: bool = False


def item_nuisance(seed: int, kind: int, ident: int, item: _Item, loose: bool) -> _Nuisance:
    """Imaging conditions of one still or video frame; ``loose`` shrinks and shifts the face per media."""
    if item.video:
        base = _sample_nuisance(_rng(seed, _STREAM_VIDEO, kind, ident, item.media))
        nz = _frame_nuisance(base, _rng(seed, _STREAM_MOTION, kind, ident, item.media), item.frame)
    else:
        nz = _sample_nuisance(_rng(seed, _STREAM_IMAGE, kind, ident, item.media))
    if loose:
        rng = _rng(seed, _STREAM_PLACEMENT, kind, ident, item.media)
        k, dx, dy = rng.uniform(*LOOSE_SCALE), *rng.uniform(-LOOSE_SHIFT, LOOSE_SHIFT, 2)
        nz = replace(nz, scale=nz.scale * k, dx=nz.dx + dx, dy=nz.dy + dy)
    return nz


@dataclass(frozen=True)
class _RenderJob:
    """Renders the images of one identity into ``directory`` (``out_size`` < ``size``: shrunk after rendering)."""

    seed: int
    kind: int
    ident: int
    size: int
    out_sizes: tuple[int, ...]  # per item; 0 keeps ``size``
    loose: bool
    quality: int
    directory: str
    items: tuple[_Item, ...]


def _run_render_job(job: _RenderJob) -> int:
    ident = _sample_identity(_rng(job.seed, _STREAM_IDENTITY, job.kind, job.ident))
    folder = Path(job.directory)
    folder.mkdir(parents=True, exist_ok=True)
    for item, out in zip(job.items, job.out_sizes, strict=True):
        rgb = render_face_image(ident, item_nuisance(job.seed, job.kind, job.ident, item, job.loose), job.size)
        if out:  # native low resolution: area averaging, as a camera far away integrates the light
            rgb = cv2.resize(rgb, (out, out), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, job.quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {folder / item.name}")
        (folder / item.name).write_bytes(buf.tobytes())
    return len(job.items)


def _check_ints(obj: Any, prefix: str, minimum: dict[str, int], maximum: dict[str, int] | None = None) -> None:
    """Each named field an integer within its bounds; the message names the config key."""
    maximum = maximum or {}
    for name, low in minimum.items():
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{prefix}.{name} must be an integer, got {value!r}")
        if value < low or value > maximum.get(name, value):
            bound = f"between {low} and {maximum[name]}" if name in maximum else f">= {low}"
            raise ValueError(f"{prefix}.{name} must be {bound}, got {value}")


class _GeneratedSet:
    """Manifest, lock and atomic swap shared by the two sets (the machinery of ``SyntheticFaces.ensure``)."""

    root: Path
    workers: int

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("root", "workers")}  # type: ignore[arg-type]

    def _manifest(self) -> dict[str, Any]:
        return {"generator": f"{__name__}.{type(self).__name__}", "format_version": FORMAT_VERSION, **self.params()}

    def _current(self) -> bool:
        try:
            return json.loads((Path(self.root) / "manifest.json").read_text(encoding="utf-8")) == self._manifest()
        except (OSError, ValueError):
            return False

    def ensure(self) -> _GeneratedSet:
        """Generates the set under ``root`` unless the same one is there (locked, atomic; see SyntheticFaces)."""
        if self._current():
            return self
        root = Path(self.root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(Path(f"{root}.lock")):
            if self._current():  # another process made it while we waited
                return self
            if root.exists() and not (root / "manifest.json").is_file():
                raise ValueError(f"{root} exists but holds no synthetic manifest.json; refusing to replace it")
            for leftover in root.parent.glob(f".{root.name}.tmp-*"):  # from crashed runs; we hold the lock
                shutil.rmtree(leftover, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
            try:
                written = self._generate(tmp)
                (tmp / "manifest.json").write_text(json.dumps(self._manifest(), indent=2) + "\n", encoding="utf-8")
                _swap_in(tmp, root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            logger.info("Generated %s at %s: %d images", type(self).__name__, root, written)
        return self

    def _generate(self, base: Path) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class SyntheticIjbc(_GeneratedSet):
    """IJB-C-format set in InsightFace's packaging under ``root`` (``loose_crop/``, ``meta/``).

    Attributes:
        root: Output folder (the ``IJBC`` folder of the real packaging).
        seed: Seed of every draw; the same parameters give byte-identical files.
        num_ids: Identities; the first half are enrolled in gallery G1, the second half in G2.
        templates_per_id: Templates per identity: one gallery template and the rest probes.
        max_media_per_template: Each template has 1 .. this many media.
        video_percent: Chance (in %) that a media is a run of video frames instead of a still.
        frames_per_run: Frames of a video media.
        impostor_pairs: At most this many different-identity template pairs in the 1:1 list (all genuine pairs are
            listed).
        crop_size: Width and height of a loose crop (larger than the 112 px aligned input).
        jpeg_quality: Quality of the saved JPEG files.
        workers: Generation processes (does not change the output).
    """

    root: str | os.PathLike[str]
    seed: int = 0
    num_ids: int = 60
    templates_per_id: int = 4
    max_media_per_template: int = 3
    video_percent: int = 40
    frames_per_run: int = 3
    impostor_pairs: int = 20000
    crop_size: int = 160
    jpeg_quality: int = 95
    workers: int = 2

    prefix = "ijbc"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        minimum = {
            "seed": 0, "num_ids": 4, "templates_per_id": 2, "max_media_per_template": 1, "video_percent": 0,
            "frames_per_run": 2, "impostor_pairs": 1, "crop_size": 128, "jpeg_quality": 1, "workers": 1,
        }  # fmt: skip
        _check_ints(self, "ijbc", minimum, {"video_percent": 100, "crop_size": 1024, "jpeg_quality": 100})

    def meta(self, name: str) -> Path:
        """``root/meta/ijbc_<name>`` (``face_tid_mid.txt``, ``1N_gallery_G1.csv``, ...)."""
        return Path(self.root) / "meta" / f"{self.prefix}_{name}"

    def _plan(self) -> tuple[list[_RenderJob], list[tuple[int, int, int, _Item]]]:
        """Render jobs and one ``(identity, template, media id, item)`` row per image, in file-number order."""
        rng = _rng(self.seed, _STREAM_PROTOCOL, KIND_IJBC)
        jobs, rows = [], []
        number = template = media_id = 0
        for ident in range(self.num_ids):
            items = []
            media_index = 0
            for _ in range(self.templates_per_id):
                template += 1
                for _ in range(int(rng.integers(1, self.max_media_per_template + 1))):
                    media_id += 1
                    video = bool(rng.uniform(0, 100) < self.video_percent)
                    for frame in range(self.frames_per_run if video else 1):
                        number += 1
                        items.append(_Item(f"{number}.jpg", media_index, frame, video))
                        rows.append((ident, template, media_id, items[-1]))
                    media_index += 1
            jobs.append(
                _RenderJob(self.seed, KIND_IJBC, ident, self.crop_size, (0,) * len(items), True, self.jpeg_quality,
                           "", tuple(items))
            )  # fmt: skip
        return jobs, rows

    def _generate(self, base: Path) -> int:
        jobs, rows = self._plan()
        written = _run_jobs(
            [replace(j, directory=str(base / "loose_crop")) for j in jobs], self.workers, _run_render_job
        )
        (base / "meta").mkdir()
        target = replace(self, root=base)
        identities = {i: _sample_identity(_rng(self.seed, _STREAM_IDENTITY, KIND_IJBC, i)) for i in range(self.num_ids)}
        lines_tid, lines_lmk, boxes = [], [], {}
        for ident, tid, mid, item in rows:
            nz = item_nuisance(self.seed, KIND_IJBC, ident, item, loose=True)
            points = face_landmarks(identities[ident], nz, self.crop_size)
            score = faceness_score(nz, _rng(self.seed, _STREAM_PROTOCOL, KIND_IJBC, ident, int(item.name[:-4])))
            lines_tid.append(f"{item.name} {tid} {mid}")
            lines_lmk.append(" ".join([item.name, *(f"{v:.3f}" for v in points.ravel()), f"{score:.3f}"]))
            boxes[item.name] = _face_box(points)
        target.meta("face_tid_mid.txt").write_text("\n".join(lines_tid) + "\n", encoding="utf-8")
        target.meta("name_5pts_score.txt").write_text("\n".join(lines_lmk) + "\n", encoding="utf-8")
        self._write_pairs(target, rows)
        self._write_1n(target, rows, boxes)
        return written

    def _write_pairs(self, target: SyntheticIjbc, rows: list[tuple[int, int, int, _Item]]) -> None:
        """All same-identity template pairs and up to ``impostor_pairs`` different-identity ones, sorted."""
        subject = np.zeros(rows[-1][1] + 1, dtype=np.int64)
        for ident, tid, _, _ in rows:
            subject[tid] = ident
        t1, t2 = np.triu_indices(len(subject) - 1, k=1)
        t1, t2 = t1 + 1, t2 + 1  # template ids start at 1
        same = subject[t1] == subject[t2]
        impostors = np.flatnonzero(~same)
        rng = _rng(self.seed, _STREAM_PROTOCOL, KIND_IJBC, 1)
        if impostors.size > self.impostor_pairs:
            impostors = np.sort(rng.choice(impostors, self.impostor_pairs, replace=False))
        keep = np.sort(np.concatenate([np.flatnonzero(same), impostors]))
        lines = [f"{a} {b} {int(s)}" for a, b, s in zip(t1[keep], t2[keep], same[keep], strict=True)]
        target.meta("template_pair_label.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_1n(self, target: SyntheticIjbc, rows: list[tuple[int, int, int, _Item]], boxes: dict) -> None:
        """Gallery G1 / G2 (each identity's first template) and the mixed probe list (all other templates)."""
        first = {}
        for ident, tid, _, _ in rows:
            first.setdefault(ident, tid)
        files: dict[str, list[str]] = {"1N_gallery_G1.csv": [], "1N_gallery_G2.csv": [], "1N_probe_mixed.csv": []}
        for ident, tid, mid, item in rows:
            if tid != first[ident]:
                name = "1N_probe_mixed.csv"
            else:
                name = "1N_gallery_G1.csv" if ident < self.num_ids // 2 else "1N_gallery_G2.csv"
            source = f"frames/{item.name}" if item.video else f"img/{item.name}"
            x, y, w, h = boxes[item.name]
            files[name].append(f"{tid},{ident + 1},{source},{mid},{x},{y},{w},{h}")
        for name, lines in files.items():
            target.meta(name).write_text("\n".join([GALLERY_CSV_HEADER, *lines]) + "\n", encoding="utf-8")


def _face_box(points: np.ndarray) -> tuple[int, int, int, int]:
    """A square face box ``(x, y, width, height)`` around the landmarks, as a detector would draw it."""
    centre = points.mean(axis=0)
    side = 2.2 * float(np.linalg.norm(points[3:].mean(axis=0) - points[:2].mean(axis=0)))
    return round(centre[0] - side / 2), round(centre[1] - side / 2), round(side), round(side)


def _mat_cell(names: list[str]) -> np.ndarray:
    """A MATLAB N×1 cell array of strings (the official lists' ``gallery_set`` / ``probe_set``)."""
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    return cell


@dataclass(frozen=True)
class SyntheticTinyFace(_GeneratedSet):
    """TinyFace-format set: ``root/Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}`` and the two ``.mat`` lists.

    Attributes:
        root: Output folder (read with ``facetrain.data.tinyface.read_tinyface(root)``).
        seed: Seed of every draw.
        num_ids: Probe identities, each with gallery-match images.
        probes_per_id: Probe images per identity (``<id>_<k>.jpg``).
        gallery_per_id: Gallery-match images per identity.
        num_distractors: Distractor images, one per further identity.
        min_size: Smallest side of a low-resolution image.
        max_size: Largest side (each image draws its size in between).
        jpeg_quality: Quality of the saved JPEG files.
        workers: Generation processes (does not change the output).
    """

    root: str | os.PathLike[str]
    seed: int = 0
    num_ids: int = 100
    probes_per_id: int = 2
    gallery_per_id: int = 2
    num_distractors: int = 300
    min_size: int = 16
    max_size: int = 28
    jpeg_quality: int = 95
    workers: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        minimum = {
            "seed": 0, "num_ids": 2, "probes_per_id": 1, "gallery_per_id": 1, "num_distractors": 0, "min_size": 8,
            "max_size": self.min_size if isinstance(self.min_size, int) else 8, "jpeg_quality": 1, "workers": 1,
        }  # fmt: skip
        _check_ints(self, "tinyface", minimum, {"max_size": 112, "jpeg_quality": 100})

    def _generate(self, base: Path) -> int:
        testing = base / "Testing_Set"
        rng = _rng(self.seed, _STREAM_PROTOCOL, KIND_TINYFACE)
        jobs, lists = [], {"Probe": ([], []), "Gallery_Match": ([], [])}
        for ident in range(self.num_ids):
            for folder, first, count in (("Probe", 0, self.probes_per_id), ("Gallery_Match", self.probes_per_id,
                                                                              self.gallery_per_id)):  # fmt: skip
                items = tuple(_Item(f"{ident + 1}_{first + k + 1}.jpg", first + k) for k in range(count))
                jobs.append(self._job(KIND_TINYFACE, ident, str(testing / folder), items, rng))
                lists[folder][0].extend(item.name for item in items)
                lists[folder][1].extend([ident + 1] * count)
        for d in range(self.num_distractors):
            item = (_Item(f"{self.num_ids + d + 1}_1.jpg", 0),)
            jobs.append(self._job(KIND_TINYFACE_DISTRACTOR, d, str(testing / "Gallery_Distractor"), item, rng))
        (testing / "Gallery_Distractor").mkdir(parents=True)
        written = _run_jobs(jobs, self.workers, _run_render_job)
        for mat, folder, key in (("gallery_match_img_ID_pairs.mat", "Gallery_Match", "gallery"),
                                 ("probe_img_ID_pairs.mat", "Probe", "probe")):  # fmt: skip
            names, ids = lists[folder]
            scipy.io.savemat(
                testing / mat, {f"{key}_set": _mat_cell(names), f"{key}_ids": np.array(ids, np.float64)[:, None]}
            )
        return written

    def _job(
        self, kind: int, ident: int, directory: str, items: tuple[_Item, ...], rng: np.random.Generator
    ) -> _RenderJob:
        sizes = tuple(int(s) for s in rng.integers(self.min_size, self.max_size + 1, len(items)))
        return _RenderJob(self.seed, kind, ident, 112, sizes, False, self.jpeg_quality, directory, items)
