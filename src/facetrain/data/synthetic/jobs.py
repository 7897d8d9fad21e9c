"""Rendering jobs: one identity's images, each a pure function of ``(seed, kind, identity, media, frame)``.

One job renders and writes all images of one identity, so the identity's traits are drawn once per job and a process
pool (:func:`facetrain.data.synthetic.pool.run_jobs`) gets work items of a useful size. Every synthetic set (the
CASIA/LFW/YTF-format faces and the IJB-C- and TinyFace-format companions) writes its images through
:func:`render_job`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2

from facetrain.data.synthetic.render import render_face_image
from facetrain.data.synthetic.seeds import (
    STREAM_IDENTITY,
    STREAM_IMAGE,
    STREAM_MOTION,
    STREAM_PLACEMENT,
    STREAM_VIDEO,
    keyed_rng,
)
from facetrain.data.synthetic.traits import Nuisance, frame_nuisance, sample_identity, sample_nuisance

__all__ = ["LOOSE_SCALE", "LOOSE_SHIFT", "Item", "RenderJob", "item_nuisance", "render_job"]

LOOSE_SCALE = (0.7, 0.95)  # face size in a loose crop relative to the 112 px rendering of the same crop size
LOOSE_SHIFT = 0.08  # extra off-centre shift of a loose crop, fraction of the crop


@dataclass(frozen=True)
class Item:
    """One image of a job.

    Attributes:
        name: File path relative to the job's directory (``001.jpg``, ``0/aligned_detect_0.1.jpg``).
        media: Index of the still, or of the video, among the identity's media: the key of its nuisance draw.
        frame: Frame index within the video (stills: 0).
        video: A frame of a video (one base nuisance per media, smooth motion per frame) rather than a still.
        out_size: Side the rendering is shrunk to before saving (native low resolution); 0 keeps the rendered size.
    """

    name: str
    media: int
    frame: int = 0
    video: bool = False
    out_size: int = 0


@dataclass(frozen=True)
class RenderJob:
    """Renders the images of one identity into ``directory``.

    Attributes:
        seed: Dataset seed.
        kind: Which people (``facetrain.data.synthetic.seeds.KIND_*``).
        ident: Identity index within the kind.
        size: Rendered width and height.
        quality: JPEG quality of the saved files.
        directory: Folder the item names are relative to.
        items: The images.
        loose: Loose crops: each media's face is shrunk and moved off-centre (IJB-C's unaligned crops).
    """

    seed: int
    kind: int
    ident: int
    size: int
    quality: int
    directory: str
    items: tuple[Item, ...]
    loose: bool = False


def item_nuisance(seed: int, kind: int, ident: int, item: Item, loose: bool = False) -> Nuisance:
    """Imaging conditions of one still or video frame; ``loose`` shrinks and shifts the face per media."""
    if item.video:
        base = sample_nuisance(keyed_rng(seed, STREAM_VIDEO, kind, ident, item.media))
        nz = frame_nuisance(base, keyed_rng(seed, STREAM_MOTION, kind, ident, item.media), item.frame)
    else:
        nz = sample_nuisance(keyed_rng(seed, STREAM_IMAGE, kind, ident, item.media))
    if loose:
        rng = keyed_rng(seed, STREAM_PLACEMENT, kind, ident, item.media)
        k, dx, dy = rng.uniform(*LOOSE_SCALE), *rng.uniform(-LOOSE_SHIFT, LOOSE_SHIFT, 2)
        nz = replace(nz, scale=nz.scale * k, dx=nz.dx + dx, dy=nz.dy + dy)
    return nz


def render_job(job: RenderJob) -> int:
    """Renders and writes the images of one job as JPEG files; returns the number of files written."""
    ident = sample_identity(keyed_rng(job.seed, STREAM_IDENTITY, job.kind, job.ident))
    folder = Path(job.directory)
    for item in job.items:
        path = folder / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = render_face_image(ident, item_nuisance(job.seed, job.kind, job.ident, item, job.loose), job.size)
        if item.out_size:  # native low resolution: area averaging, as a camera far away integrates the light
            rgb = cv2.resize(rgb, (item.out_size, item.out_size), interpolation=cv2.INTER_AREA)
        # cv2 encodes BGR: convert, or every saved face would have red and blue swapped.
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, job.quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {path}")
        path.write_bytes(buf.tobytes())
    return len(job.items)
