"""Synthetic IJB-C-format evaluation set in InsightFace's packaging (``recognition/_evaluation_/ijb/``).

``loose_crop/<n>.jpg`` are loose, *unaligned* crops (``crop_size`` px, larger than 112, the face smaller and
off-centre); ``meta/ijbc_face_tid_mid.txt`` (``image template media``), ``meta/ijbc_name_5pts_score.txt`` (image,
five (x, y) landmarks from the renderer's geometry, faceness score), ``meta/ijbc_template_pair_label.txt``
(``t1 t2 label``) and the 1:N lists ``meta/ijbc_1N_gallery_G1.csv``, ``meta/ijbc_1N_gallery_G2.csv``,
``meta/ijbc_1N_probe_mixed.csv``. A template is several media; a media is a still or a short run of video frames
(one pose draw plus smooth motion, as the YTF-format videos). Each identity has one gallery template (G1 for the first
half of the identities, G2 for the second) and ``templates_per_id - 1`` probe templates, so every probe is mated in
one gallery and non-mated in the other, as in IJB-C's mixed-media protocol (Maze et al., ICB 2018).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from facetrain.data.synthetic.companion import CompanionSet
from facetrain.data.synthetic.jobs import Item, RenderJob, item_nuisance, render_job
from facetrain.data.synthetic.painter import Painter
from facetrain.data.synthetic.pool import run_jobs
from facetrain.data.synthetic.seeds import KIND_IJBC, STREAM_IDENTITY, STREAM_PROTOCOL, keyed_rng
from facetrain.data.synthetic.traits import Identity, Nuisance, sample_identity
from facetrain.utils.rules import Constraint, Interval, check_args

__all__ = ["GALLERY_CSV_HEADER", "SyntheticIjbc", "face_landmarks", "faceness_score"]

#: Header of the IJB-C 1:N template lists (IJB-C ``protocols/test2``; InsightFace reads columns 0 and 1).
GALLERY_CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"

#: One image of the set: ``(identity, template id, media id, item)``, in file-number order.
Row = tuple[int, int, int, Item]


def face_landmarks(ident: Identity, nz: Nuisance, size: int) -> np.ndarray:
    """The five ArcFace landmarks of a rendered face, in pixels (pixel centres at integers, as ``cv2`` draws).

    Points of the drawing code projected through the same head pose and image transform as the renderer: the eye
    centres (``_draw_eyes``' almond centres), the nose tip (the ``_draw_nose`` wedge apex at ``nose_depth``) and
    the lip corners (``_draw_mouth`` at ``x = ±mouth_w``, where the smile bends them).

    Returns:
        ``5×2`` (x, y): image-left eye, image-right eye, nose, image-left and image-right mouth corner.
    """
    p = Painter(np.empty((size, size, 3), np.uint8), ident, nz)
    i = ident
    corner_y = i.mouth_y - (nz.smile + i.mouth_curve)
    eyes = p.surface(np.array([[-i.eye_dx, i.eye_y], [i.eye_dx, i.eye_y]]))
    nose = p.surface(np.array([[0.0, i.eye_y + i.nose_len + 0.06]]), i.nose_depth)
    mouth = p.surface(np.array([[-i.mouth_w, corner_y], [i.mouth_w, corner_y]]), 0.03)
    return np.concatenate([eyes, nose, mouth])


def faceness_score(nz: Nuisance, rng: np.random.Generator) -> float:
    """A plausible detector confidence: near 1 for a frontal, sharp, unoccluded face, lower for hard ones."""
    score = 0.995 - 0.45 * abs(nz.yaw) - 0.5 * abs(nz.pitch) - 0.06 * nz.blur - 0.25 * nz.occlude
    return float(np.clip(score + rng.normal(0.0, 0.02), 0.3, 0.999))


def _face_box(points: np.ndarray) -> tuple[int, int, int, int]:
    """A square face box ``(x, y, width, height)`` around the landmarks, as a detector would draw it."""
    centre = points.mean(axis=0)
    side = 2.2 * float(np.linalg.norm(points[3:].mean(axis=0) - points[:2].mean(axis=0)))
    return round(centre[0] - side / 2), round(centre[1] - side / 2), round(side), round(side)


@dataclass(frozen=True)
class SyntheticIjbc(CompanionSet):
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

    prefix = "ijbc"  # of the meta file names
    own_entries: ClassVar[frozenset[str]] = frozenset({"loose_crop", "meta"})
    # Enforced on the config (``synthetic.ijbc.<key>``) before anything is built, and again by __post_init__.
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "seed": Interval(0, integer=True),
        "num_ids": Interval(4, integer=True),  # two galleries of at least two people
        "templates_per_id": Interval(2, integer=True),  # a gallery template and a probe
        "max_media_per_template": Interval(1, integer=True),
        "video_percent": Interval(0, 100, integer=True),
        "frames_per_run": Interval(2, integer=True),
        "impostor_pairs": Interval(1, integer=True),
        "crop_size": Interval(128, 1024, integer=True),  # larger than the 112 px aligned face
        "jpeg_quality": Interval(1, 100, integer=True),
        "workers": Interval(1, integer=True),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        check_args(self, prefix="synthetic.ijbc")

    def meta(self, name: str) -> Path:
        """``root/meta/ijbc_<name>`` (``face_tid_mid.txt``, ``1N_gallery_G1.csv``, ...)."""
        return Path(self.root) / "meta" / f"{self.prefix}_{name}"

    def _plan(self) -> tuple[list[RenderJob], list[Row]]:
        """Render jobs (directory left empty) and one row per image, in file-number order."""
        rng = keyed_rng(self.seed, STREAM_PROTOCOL, KIND_IJBC)
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
                        items.append(Item(f"{number}.jpg", media_index, frame, video))
                        rows.append((ident, template, media_id, items[-1]))
                    media_index += 1
            jobs.append(
                RenderJob(self.seed, KIND_IJBC, ident, self.crop_size, self.jpeg_quality, "", tuple(items), True)
            )
        return jobs, rows

    def _write(self, base: Path) -> int:
        jobs, rows = self._plan()
        written = run_jobs(render_job, [replace(j, directory=str(base / "loose_crop")) for j in jobs], self.workers)
        (base / "meta").mkdir()
        target = replace(self, root=base)
        identities = {
            i: sample_identity(keyed_rng(self.seed, STREAM_IDENTITY, KIND_IJBC, i)) for i in range(self.num_ids)
        }
        lines_tid, lines_lmk, boxes = [], [], {}
        for ident, tid, mid, item in rows:
            nz = item_nuisance(self.seed, KIND_IJBC, ident, item, loose=True)
            points = face_landmarks(identities[ident], nz, self.crop_size)
            score = faceness_score(nz, keyed_rng(self.seed, STREAM_PROTOCOL, KIND_IJBC, ident, int(item.name[:-4])))
            lines_tid.append(f"{item.name} {tid} {mid}")
            lines_lmk.append(" ".join([item.name, *(f"{v:.3f}" for v in points.ravel()), f"{score:.3f}"]))
            boxes[item.name] = _face_box(points)
        target.meta("face_tid_mid.txt").write_text("\n".join(lines_tid) + "\n", encoding="utf-8")
        target.meta("name_5pts_score.txt").write_text("\n".join(lines_lmk) + "\n", encoding="utf-8")
        self._write_pairs(target, rows)
        self._write_1n(target, rows, boxes)
        return written

    def _write_pairs(self, target: SyntheticIjbc, rows: list[Row]) -> None:
        """All same-identity template pairs and up to ``impostor_pairs`` different-identity ones, sorted."""
        subject = np.zeros(rows[-1][1] + 1, dtype=np.int64)
        for ident, tid, _, _ in rows:
            subject[tid] = ident
        t1, t2 = np.triu_indices(len(subject) - 1, k=1)
        t1, t2 = t1 + 1, t2 + 1  # template ids start at 1
        same = subject[t1] == subject[t2]
        impostors = np.flatnonzero(~same)
        rng = keyed_rng(self.seed, STREAM_PROTOCOL, KIND_IJBC, 1)
        if impostors.size > self.impostor_pairs:
            impostors = np.sort(rng.choice(impostors, self.impostor_pairs, replace=False))
        keep = np.sort(np.concatenate([np.flatnonzero(same), impostors]))
        lines = [f"{a} {b} {int(s)}" for a, b, s in zip(t1[keep], t2[keep], same[keep], strict=True)]
        target.meta("template_pair_label.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_1n(self, target: SyntheticIjbc, rows: list[Row], boxes: dict[str, tuple[int, int, int, int]]) -> None:
        """Gallery G1 / G2 (each identity's first template) and the mixed probe list (all other templates)."""
        first: dict[int, int] = {}
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
