"""Procedural synthetic face dataset written in the real CASIA-WebFace / LFW / YouTube Faces on-disk formats.

It is the framework's default dataset: no real face data can be downloaded in every environment, yet the training,
evaluation and protocol code must run end to end on the same files they would read for the real benchmarks. It is
a genuine open-set task: LFW- and YTF-format identities never occur in the training set, so a model only scores
well if it learns identity features that transfer to unseen people.

Faces are drawn with OpenCV from a per-identity trait vector (face shape, skin, hair, eyes, brows, nose, mouth,
ears, beard, glasses, a mole) under per-image nuisances (background clutter, clothing, head pose with a 3-D yaw and
pitch of the inner features, scale/shift/roll, lighting gradient, gain/offset/colour cast, expression, blur,
noise, JPEG re-compression, occluders). YTF videos get one nuisance draw per video and smooth per-frame motion
around it, so frames of one video are far more alike than two videos of one person.

Everything is a pure function of the seed: every image has its own ``numpy`` generator seeded by
``(seed, stream, kind, identity, video, frame)``, so a multiprocessing pool produces byte-identical files.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facetrain.data.protocols import write_lfw_pairs, write_ytf_splits

__all__ = ["FORMAT_VERSION", "SyntheticFaces", "make_names", "render_face_image"]

logger = logging.getLogger(__name__)

# Bump whenever the rendering or the layout changes, so existing datasets are regenerated instead of reused.
FORMAT_VERSION = 1

N_FOLDS = 10
_KIND_TRAIN, _KIND_LFW, _KIND_YTF = 0, 1, 2
_STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_VIDEO, _STREAM_MOTION, _STREAM_NAMES, _STREAM_PAIRS = range(6)
# Files and folders that ensure() itself writes; anything else under root is not ours to delete.
_OWN_ENTRIES = {"casia", "lfw", "ytf", "pairs.txt", "manifest.json"}


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """Returns the generator of one stream/key; fixed-length entropy keeps keys of different kinds apart."""
    parts = list(key) + [0] * (4 - len(key))
    return np.random.default_rng([seed, stream, *parts])


# ---------------------------------------------------------------------------------------------------------------
# Identity traits and per-image nuisances
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    """Geometry and colouring of one synthetic person, in face units (face half-width ~1, y pointing down)."""

    skin: tuple[float, float, float]
    face_w: float
    face_h: float
    jaw: float
    depth: float
    hair: tuple[float, float, float]
    hair_style: int  # 0 short, 1 long, 2 fringe, 3 receding
    hair_top: float
    hair_side: float
    hair_side_len: float
    hairline: float
    hair_len: float
    hair_part: float
    fringe_phase: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    iris_r: float
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_tilt: float
    brow_arch: float
    nose_len: float
    nose_w: float
    nose_depth: float
    mouth_y: float
    mouth_w: float
    lip_u: float
    lip_l: float
    lips: tuple[float, float, float]
    mouth_curve: float
    ear_size: float
    beard: int  # 0 none, 1 moustache, 2 goatee, 3 full
    glasses: int  # 0 none, 1 round, 2 rectangular
    glasses_rgb: tuple[float, float, float]
    mole: tuple[float, float] | None


_HAIR_PALETTE = np.array(
    [[25, 20, 18], [60, 40, 28], [105, 70, 40], [165, 120, 70], [215, 180, 120], [150, 60, 30], [150, 150, 150]],
    dtype=np.float64,
)
_IRIS_PALETTE = np.array([[70, 45, 25], [110, 75, 40], [60, 110, 160], [80, 130, 90], [110, 115, 120]], np.float64)


def _rgb(values: np.ndarray | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """A colour as a plain float triple, clipped to 0..255 (cv2 drawing calls want Python floats)."""
    r, g, b = (float(min(255.0, max(0.0, v))) for v in values)
    return r, g, b


def _colour(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, float, float]:
    """Picks a palette colour with per-channel jitter, so identities sharing a palette entry still differ."""
    rgb = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return _rgb(rgb)


def _sample_skin(rng: np.random.Generator) -> tuple[float, float, float]:
    """Skin tone on a light-to-dark continuum with a small hue shift."""
    t = rng.uniform(0.0, 1.0)
    light, dark = np.array([236.0, 196.0, 170.0]), np.array([95.0, 62.0, 45.0])
    rgb = light * (1 - t) + dark * t + rng.normal(0.0, 7.0, 3)
    return _rgb(rgb)


def _sample_identity(rng: np.random.Generator) -> _Identity:
    """Draws the traits of one person."""
    u = rng.uniform
    skin = _sample_skin(rng)
    face_w, face_h = u(0.86, 1.08), u(1.2, 1.48)
    eye_y = u(-0.38, -0.12)
    nose_len = u(0.3, 0.52)
    mouth_y = min(eye_y + nose_len + u(0.2, 0.36), face_h * 0.72)
    hair = _colour(_HAIR_PALETTE, rng, 12.0)
    lips = _rgb(np.array(skin) * u(0.55, 0.8) + np.array([u(25, 70), 0, u(0, 20)]))
    return _Identity(
        skin=skin, face_w=face_w, face_h=face_h, jaw=u(0.0, 0.4), depth=u(0.85, 1.1) * face_w,
        hair=hair, hair_style=int(rng.choice(4, p=[0.4, 0.25, 0.2, 0.15])), hair_top=u(0.08, 0.45),
        hair_side=u(0.04, 0.2), hair_side_len=u(-0.45, 0.15), hairline=u(-0.98, -0.62) * face_h,
        hair_len=u(0.6, 2.4), hair_part=u(-0.5, 0.5), fringe_phase=u(0, 2 * math.pi),
        eye_y=eye_y, eye_dx=u(0.3, 0.5), eye_w=u(0.14, 0.24), eye_h=u(0.055, 0.11),
        iris=_colour(_IRIS_PALETTE, rng, 15.0), iris_r=u(0.5, 0.75),
        brow_gap=u(0.13, 0.27), brow_len=u(0.2, 0.38), brow_thick=u(0.025, 0.08), brow_tilt=u(-0.3, 0.3),
        brow_arch=u(0.0, 0.09), nose_len=nose_len, nose_w=u(0.09, 0.2), nose_depth=u(0.15, 0.45),
        mouth_y=mouth_y, mouth_w=u(0.22, 0.42), lip_u=u(0.02, 0.065), lip_l=u(0.03, 0.09), lips=lips,
        mouth_curve=u(-0.05, 0.05), ear_size=u(0.18, 0.32),
        beard=int(rng.choice(4, p=[0.72, 0.1, 0.08, 0.1])),
        glasses=int(rng.choice(3, p=[0.8, 0.1, 0.1])), glasses_rgb=_colour(_HAIR_PALETTE[:4], rng, 20.0),
        mole=(float(u(-0.7, 0.7)), float(u(-0.2, 0.7))) if rng.uniform() < 0.3 else None,
    )  # fmt: skip


@dataclass(frozen=True)
class _Nuisance:
    """Per-image (or per-video-frame) imaging conditions and expression."""

    roll: float  # degrees
    yaw: float  # radians
    pitch: float  # radians
    scale: float
    dx: float  # fraction of the image size
    dy: float
    gain: float
    offset: float
    cast: tuple[float, float, float]
    light_angle: float
    light_strength: float
    blur: float  # Gaussian sigma in pixels at 112x112
    noise: float  # pixel noise sigma (0..255 scale)
    brow_raise: float
    smile: float
    mouth_open: float
    eye_open: float
    gaze: float
    hair_jitter: float
    jpeg_q: int  # 0: no extra re-compression
    occlude: bool
    scene_seed: int  # background, clutter, clothing and occluder draw
    noise_seed: int = field(default=0)


# Ranges of the per-image nuisances (tuned so that raw pixels and an untrained CNN fail but a short training succeeds).
_NUISANCE = {
    "roll_sd": 6.0, "roll_max": 15.0, "yaw": 0.3, "pitch": 0.12, "scale": 0.1, "shift": 0.045,
    "gain": (0.75, 1.25), "offset": 15.0, "cast": 0.07, "light": 0.5, "blur": (0.0, 0.0, 0.5, 0.8, 1.1),
    "noise": 6.0, "jpeg_p": 0.15, "jpeg_q": (40, 80), "occlude_p": 0.06, "clutter_max": 4, "open_p": 0.3,
}  # fmt: skip


def _sample_nuisance(rng: np.random.Generator) -> _Nuisance:
    """Draws the imaging conditions of one still image (or the base conditions of one video)."""
    u, r = rng.uniform, _NUISANCE
    return _Nuisance(
        roll=float(np.clip(rng.normal(0.0, r["roll_sd"]), -r["roll_max"], r["roll_max"])),
        yaw=u(-r["yaw"], r["yaw"]), pitch=u(-r["pitch"], r["pitch"]),
        scale=u(1 - r["scale"], 1 + r["scale"]), dx=u(-r["shift"], r["shift"]), dy=u(-r["shift"], r["shift"]),
        gain=u(*r["gain"]), offset=u(-r["offset"], r["offset"]),
        cast=_rgb(u(1 - r["cast"], 1 + r["cast"], 3)),
        light_angle=u(0, 2 * math.pi), light_strength=u(0.0, r["light"]),
        blur=float(rng.choice(r["blur"])), noise=u(0.0, r["noise"]),
        brow_raise=rng.normal(0.0, 0.025), smile=u(-0.04, 0.12),
        mouth_open=u(0.01, 0.1) if rng.uniform() < r["open_p"] else 0.0, eye_open=u(0.55, 1.1), gaze=u(-0.35, 0.35),
        hair_jitter=u(-0.1, 0.1), jpeg_q=int(rng.integers(*r["jpeg_q"])) if rng.uniform() < r["jpeg_p"] else 0,
        occlude=bool(rng.uniform() < r["occlude_p"]), scene_seed=int(rng.integers(2**31)),
        noise_seed=int(rng.integers(2**31)),
    )  # fmt: skip


# Smooth per-frame motion of a video: field -> amplitude of a sinusoid around the video's base value.
_VIDEO_MOTION = {
    "roll": 3.0, "yaw": 0.1, "pitch": 0.05, "scale": 0.03, "dx": 0.015, "dy": 0.015, "gain": 0.05,
    "light_strength": 0.05, "brow_raise": 0.012, "smile": 0.03, "eye_open": 0.15, "gaze": 0.12,
}  # fmt: skip


def _frame_nuisance(base: _Nuisance, motion_rng: np.random.Generator, frame: int) -> _Nuisance:
    """Nuisance of one video frame: the video's base plus slow sinusoidal motion and fresh sensor noise.

    ``motion_rng`` must be freshly seeded per video: the same (amplitude, frequency, phase) draws then apply to
    every frame, which keeps frames deterministic and independent of generation order.
    """
    changes: dict[str, Any] = {}
    for name, amp in _VIDEO_MOTION.items():
        a, freq, phase = motion_rng.uniform(0.3, 1.0) * amp, motion_rng.uniform(0.02, 0.1), motion_rng.uniform(0, 6.3)
        changes[name] = getattr(base, name) + a * math.sin(2 * math.pi * freq * frame + phase)
    changes["noise_seed"] = int(motion_rng.integers(2**31)) + frame
    return replace(base, **changes)


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _ellipse_pts(cx: float, cy: float, ax: float, ay: float, t0: float = 0.0, t1: float = 2 * math.pi, n: int = 28):
    """Points on an axis-aligned elliptic arc (angle 0 = +x, increasing towards +y, i.e. downwards)."""
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _c(rgb: tuple[float, float, float] | np.ndarray, k: float = 1.0) -> tuple[float, float, float]:
    """Scales a colour for cv2 drawing calls (which want plain floats)."""
    return _rgb([c * k for c in rgb])


class _Painter:
    """Projects face-space points through head pose and image transform and draws them anti-aliased."""

    _SHIFT = 4  # cv2 fixed-point sub-pixel bits

    def __init__(self, img: np.ndarray, ident: _Identity, nz: _Nuisance) -> None:
        self.img, self.ident = img, ident
        size = img.shape[0]
        s = size * 0.245 * nz.scale
        roll = math.radians(nz.roll)
        cx, cy = size * (0.5 + nz.dx), size * (0.53 + nz.dy)
        self.m = np.array([[s * math.cos(roll), -s * math.sin(roll), cx], [s * math.sin(roll), s * math.cos(roll), cy]])
        self.px_per_unit = s
        self.cyaw, self.syaw = math.cos(nz.yaw), math.sin(nz.yaw)
        self.cpitch, self.spitch = math.cos(nz.pitch), math.sin(nz.pitch)
        # Half-axes of the head silhouette: an ellipsoid (face_w, face_h, depth) rotated by yaw and pitch.
        self.sil_w = math.hypot(ident.face_w * self.cyaw, ident.depth * self.syaw)
        self.sil_h = math.hypot(ident.face_h * self.cpitch, ident.depth * self.spitch)

    def surface_z(self, pts: np.ndarray) -> np.ndarray:
        """Depth of face-space points on the head ellipsoid (0 at and beyond the outline)."""
        fw, fh = self.ident.face_w, self.ident.face_h
        return self.ident.depth * np.sqrt(np.clip(1 - (pts[:, 0] / fw) ** 2 - (pts[:, 1] / fh) ** 2, 0, 1))

    def surface(self, pts: np.ndarray, dz: float | np.ndarray = 0.0) -> np.ndarray:
        """Pixel positions of points on (or ``dz`` in front of) the face surface, after yaw and pitch."""
        z = self.surface_z(pts) + dz
        x1 = pts[:, 0] * self.cyaw + z * self.syaw
        z1 = -pts[:, 0] * self.syaw + z * self.cyaw
        y2 = pts[:, 1] * self.cpitch - z1 * self.spitch
        return self._to_px(np.stack([x1, y2], axis=1))

    def silhouette(self, pts: np.ndarray) -> np.ndarray:
        """Pixel positions of outline-type points (head contour, hair volume) that follow the silhouette size."""
        k = np.array([self.sil_w / self.ident.face_w, self.sil_h / self.ident.face_h])
        # The silhouette shifts a little with the head turn: the nose side bulges out.
        shift = np.array([0.12 * self.syaw, -0.12 * self.spitch])
        return self._to_px(pts * k + shift)

    def _to_px(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.m[:, :2].T + self.m[:, 2]

    def _fixed(self, px: np.ndarray) -> list[np.ndarray]:
        return [np.round(px * (1 << self._SHIFT)).astype(np.int32)]

    def fill(self, px: np.ndarray, rgb: tuple[float, float, float]) -> None:
        """Fills a polygon given in pixel coordinates."""
        cv2.fillPoly(self.img, self._fixed(px), rgb, lineType=cv2.LINE_AA, shift=self._SHIFT)

    def line(self, px: np.ndarray, rgb: tuple[float, float, float], width: float, closed: bool = False) -> None:
        """Draws a polyline whose width is given in face units (at least one pixel)."""
        thickness = max(1, round(width * self.px_per_unit))
        cv2.polylines(self.img, self._fixed(px), closed, rgb, thickness, lineType=cv2.LINE_AA, shift=self._SHIFT)


@lru_cache(maxsize=4)
def _ramp_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred pixel coordinate grids in units of the image size (cached: every image of a size reuses them)."""
    g = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / size
    return np.meshgrid(g, g)


def _draw_background(img: np.ndarray, rng: np.random.Generator) -> None:
    """Random smooth colour field plus clutter shapes, so the background carries no identity information."""
    size = img.shape[0]
    blotches = rng.uniform(0, 255, (3, 3, 3)).astype(np.float32)
    base = cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC)
    mix = rng.uniform(0.3, 1.0)
    img[:] = np.clip(base * mix + rng.uniform(0, 255, 3).astype(np.float32) * (1 - mix), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, _NUISANCE["clutter_max"] + 1))):
        rgb = _c(rng.uniform(0, 255, 3))
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        w, h = rng.uniform(0.05, 0.5, 2) * size
        shape = rng.integers(3)
        if shape == 0:
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), rgb, -1, cv2.LINE_AA)
        elif shape == 1:
            cv2.ellipse(
                img, (int(x), int(y)), (int(w / 2), int(h / 2)), rng.uniform(0, 180), 0, 360, rgb, -1, cv2.LINE_AA
            )
        else:
            cv2.line(img, (int(x), int(y)), (int(x + w), int(y - h)), rgb, int(rng.integers(1, 6)), cv2.LINE_AA)


def _draw_body(p: _Painter, rng: np.random.Generator) -> None:
    """Neck and shoulders; the clothing colour is a per-image nuisance."""
    i = p.ident
    neck = np.array([[-0.42, 0.4], [0.42, 0.4], [0.48, 2.6], [-0.48, 2.6]]) * [i.face_w, i.face_h]
    p.fill(p.silhouette(neck), _c(i.skin, 0.8))
    w = rng.uniform(1.8, 2.6)
    top = i.face_h + rng.uniform(0.25, 0.55)
    shoulders = np.array(
        [[-0.45, top - 0.1], [0.45, top - 0.1], [w, top + 0.5], [w + 0.3, 4.0], [-w - 0.3, 4.0], [-w, top + 0.5]]
    )
    p.fill(p.silhouette(shoulders), _c(rng.uniform(0, 255, 3)))


def _face_outline(i: _Identity, n: int = 40) -> np.ndarray:
    """Face contour: an ellipse whose lower half narrows towards the chin by the ``jaw`` trait."""
    pts = _ellipse_pts(0.0, 0.0, i.face_w, i.face_h, n=n)
    below = np.clip(pts[:, 1] / i.face_h, 0, 1)
    pts[:, 0] *= 1 - i.jaw * below**1.6
    return pts


def _hair_cap(i: _Identity, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Hair polygon covering the top of the head down to the hairline (face units).

    Returns:
        The outer part (volume around the skull, follows the silhouette) and the hairline part (on the forehead
        surface, follows yaw and pitch); concatenated in this order they form the polygon.
    """
    top, side = i.hair_top * (1 + jitter), i.hair_side * (1 + jitter)
    outer = _ellipse_pts(0.0, 0.0, i.face_w + side, i.face_h + top, math.pi, 2 * math.pi, 24)
    side_y = i.hair_side_len if i.hair_style != 3 else min(i.hair_side_len, -0.2)
    right = [[i.face_w + side * 0.8, side_y], [i.face_w * 0.9, side_y]]
    # Hairline from the right temple over the forehead to the left temple, dipping at the parting.
    xs = np.linspace(i.face_w * 0.88, -i.face_w * 0.88, 15)
    ys = i.hairline + 0.22 * (np.abs(xs) / i.face_w) ** 2 + 0.05 * np.exp(-(((xs - i.hair_part) / 0.15) ** 2))
    temple = np.stack([xs, np.minimum(ys, side_y)], axis=1)
    left = [[-i.face_w * 0.9, side_y], [-i.face_w - side * 0.8, side_y]]
    return np.concatenate([outer, right]), np.concatenate([temple, left])


def _draw_hair_back(p: _Painter, jitter: float) -> None:
    """Long hair hanging behind the head (drawn before the face)."""
    i = p.ident
    w = i.face_w + i.hair_side * (1 + jitter) + 0.1
    back = np.concatenate(
        [
            _ellipse_pts(0.0, 0.0, w, i.face_h + i.hair_top, math.pi, 2 * math.pi, 20),
            [[w * 0.95, i.hair_len], [-w * 0.95, i.hair_len]],
        ]
    )
    p.fill(p.silhouette(back), _c(i.hair, 0.85))


def _draw_hair_front(p: _Painter, jitter: float) -> None:
    """Hair cap with hairline on the forehead, plus a jagged fringe for style 2."""
    i = p.ident
    outer, hairline = _hair_cap(i, jitter)
    p.fill(np.concatenate([p.silhouette(outer), p.surface(hairline)]), _c(i.hair))
    if i.hair_style == 2:
        xs = np.linspace(-i.face_w * 0.85, i.face_w * 0.85, 17)
        bottom = i.eye_y - i.brow_gap - 0.06 + 0.07 * np.abs(np.sin(7 * xs + i.fringe_phase))
        fringe = np.concatenate(
            [np.stack([xs, bottom], 1), [[i.face_w * 0.8, i.hairline], [-i.face_w * 0.8, i.hairline]]]
        )
        p.fill(p.surface(fringe), _c(i.hair, 0.95))


def _draw_ears(p: _Painter) -> None:
    """Ears on the silhouette (not drawn under long hair, which would cover them)."""
    i = p.ident
    for s in (-1, 1):
        ear = _ellipse_pts(s * i.face_w * 0.97, i.eye_y + 0.12, 0.13, i.ear_size, n=16)
        p.fill(p.silhouette(ear), _c(i.skin, 0.92))
        inner = _ellipse_pts(s * i.face_w * 1.0, i.eye_y + 0.12, 0.06, i.ear_size * 0.6, n=12)
        p.fill(p.silhouette(inner), _c(i.skin, 0.75))


def _draw_eyes(p: _Painter, nz: _Nuisance) -> None:
    """Almond sclera, iris clipped to the lids, pupil, lid line, per eye."""
    i = p.ident
    eh = i.eye_h * max(nz.eye_open, 0.15)
    for s in (-1, 1):
        ex = s * i.eye_dx
        almond = _ellipse_pts(ex, i.eye_y, i.eye_w, eh, n=24)
        p.fill(p.surface(almond), (238.0, 236.0, 230.0))
        r = i.iris_r * i.eye_h
        iris = _ellipse_pts(ex + nz.gaze * i.eye_w * 0.5, i.eye_y, r, r, n=20)
        # Clip the iris to the almond so a big iris looks covered by the lids, not pasted on the skin.
        dx = np.clip((iris[:, 0] - ex) / i.eye_w, -1, 1)
        lim = eh * np.sqrt(1 - dx**2)
        iris[:, 1] = np.clip(iris[:, 1], i.eye_y - lim, i.eye_y + lim)
        p.fill(p.surface(iris, 0.01), _c(i.iris))
        pupil = _ellipse_pts(ex + nz.gaze * i.eye_w * 0.5, i.eye_y, r * 0.45, min(r * 0.45, eh * 0.8), n=12)
        p.fill(p.surface(pupil, 0.01), (15.0, 12.0, 12.0))
        upper = _ellipse_pts(ex, i.eye_y, i.eye_w * 1.05, eh * 1.1, math.pi, 2 * math.pi, 14)
        p.line(p.surface(upper, 0.01), (30.0, 22.0, 20.0), 0.035)


def _draw_brows(p: _Painter, nz: _Nuisance) -> None:
    """Tapered, arched and tilted brows; ``brow_raise`` is the expression part."""
    i = p.ident
    t = np.linspace(0, 1, 10)
    for s in (-1, 1):
        x = s * (i.eye_dx - 0.5 * i.brow_len + i.brow_len * t)
        y = (
            i.eye_y
            - i.brow_gap
            - nz.brow_raise
            - i.brow_arch * np.sin(math.pi * t)
            - i.brow_tilt * (t - 0.5) * i.brow_len
        )
        th = i.brow_thick * (1 - 0.5 * t)
        upper = np.stack([x, y - th / 2], 1)
        lower = np.stack([x, y + th / 2], 1)[::-1]
        p.fill(p.surface(np.concatenate([upper, lower]), 0.02), _c(i.hair, 0.75))


def _draw_nose(p: _Painter) -> None:
    """Shaded nose wedge sticking out of the face (so it shifts most under yaw) plus nostrils."""
    i = p.ident
    y0, y1, w = i.eye_y + 0.08, i.eye_y + i.nose_len, i.nose_w
    wedge = np.array(
        [
            [-0.04, y0],
            [-w, y1 - 0.02],
            [-w * 0.5, y1 + 0.05],
            [0.0, y1 + 0.06],
            [w * 0.5, y1 + 0.05],
            [w, y1 - 0.02],
            [0.04, y0],
        ]
    )
    dz = np.array([0.02, 0.05, 0.1, i.nose_depth, 0.1, 0.05, 0.02])
    p.fill(p.surface(wedge, dz), _c(i.skin, 0.86))
    ridge = np.array([[0.0, y0], [0.0, y1]])
    p.line(p.surface(ridge, np.array([0.05, i.nose_depth])), _c(i.skin, 1.06), 0.03)
    for s in (-1, 1):
        nostril = _ellipse_pts(s * w * 0.45, y1 + 0.02, w * 0.28, 0.025, n=10)
        p.fill(p.surface(nostril, 0.12), _c(i.skin, 0.45))


def _band(x: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Polygon between two curves sampled at the same ``x``: along ``upper``, then back along ``lower``."""
    return np.concatenate([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]])


def _draw_mouth(p: _Painter, nz: _Nuisance) -> None:
    """Lips bent by the identity's curve and the image's smile, with an open mouth when ``mouth_open`` > 0."""
    i = p.ident
    x = np.linspace(-i.mouth_w, i.mouth_w, 15)
    q = (x / i.mouth_w) ** 2
    mid = i.mouth_y - (nz.smile + i.mouth_curve) * q
    env = np.sqrt(np.clip(1 - q, 0, 1))
    top = mid - i.lip_u * env - 0.015 * np.exp(-((x / 0.05) ** 2))  # with a cupid's bow dip
    gap = nz.mouth_open * env
    bottom = mid + gap + i.lip_l * env
    if nz.mouth_open > 0:
        p.fill(p.surface(_band(x, mid, mid + gap), 0.03), (60.0, 20.0, 25.0))
    p.fill(p.surface(_band(x, top, mid), 0.03), _c(i.lips, 0.9))
    p.fill(p.surface(_band(x, mid + gap, bottom), 0.03), _c(i.lips))


def _draw_beard(p: _Painter) -> None:
    """Moustache (1), goatee (2) or full beard with moustache (3), in the hair colour."""
    i = p.ident
    rgb = _c(i.hair, 0.9)
    if i.beard in (1, 3):
        x = np.linspace(-i.mouth_w * 1.1, i.mouth_w * 1.1, 9)
        upper = i.mouth_y - 0.05 - 0.02 * np.cos(x * 4)
        p.fill(p.surface(_band(x, upper, i.mouth_y - 0.13 + 0.03 * (x / i.mouth_w) ** 2), 0.04), rgb)
    if i.beard == 2:
        chin = _ellipse_pts(0.0, (i.mouth_y + i.face_h) / 2 + 0.05, i.mouth_w * 0.7, (i.face_h - i.mouth_y) / 2)
        p.fill(p.surface(chin), rgb)
    if i.beard == 3:
        # Band along the jaw from cheek to cheek, open around the mouth.
        t0 = math.asin(float(np.clip((i.mouth_y - 0.3) / i.face_h, -1, 1)))
        t = np.linspace(t0, math.pi - t0, 20)
        outer = np.stack([i.face_w * np.cos(t), i.face_h * np.sin(t)], 1)
        outer[:, 0] *= 1 - i.jaw * np.clip(outer[:, 1] / i.face_h, 0, 1) ** 1.6
        xs = np.linspace(-i.mouth_w * 1.25, i.mouth_w * 1.25, 11)
        inner = np.stack([xs, i.mouth_y + i.lip_l + 0.06 - (0.36 + i.lip_l) * (xs / xs[-1]) ** 2], 1)
        p.fill(p.surface(np.concatenate([outer, inner])), rgb)


def _draw_glasses(p: _Painter) -> None:
    """Round or rectangular frames, standing in front of the face so they move with the head turn."""
    i = p.ident
    rgb = _c(i.glasses_rgb)
    r = i.eye_w * 1.25
    for s in (-1, 1):
        ex = s * i.eye_dx
        if i.glasses == 1:
            rim = _ellipse_pts(ex, i.eye_y, r, r * 0.85, n=24)
        else:
            rim = np.array(
                [
                    [ex - r, i.eye_y - r * 0.7],
                    [ex + r, i.eye_y - r * 0.7],
                    [ex + r, i.eye_y + r * 0.6],
                    [ex - r, i.eye_y + r * 0.6],
                ]
            )
        p.line(p.surface(rim, 0.12), rgb, 0.035, closed=True)
        temple = np.array([[s * (i.eye_dx + r), i.eye_y - 0.05], [s * i.face_w * 0.98, i.eye_y - 0.02]])
        p.line(p.surface(temple, np.array([0.12, 0.0])), rgb, 0.03)
    bridge = np.array([[-i.eye_dx + r, i.eye_y - 0.05], [0.0, i.eye_y - 0.09], [i.eye_dx - r, i.eye_y - 0.05]])
    p.line(p.surface(bridge, 0.15), rgb, 0.03)


def _draw_occluder(p: _Painter, rng: np.random.Generator) -> None:
    """A hand- or object-like blob over part of the face."""
    i = p.ident
    centre = np.array([rng.uniform(-0.9, 0.9) * i.face_w, rng.uniform(-0.4, 1.0) * i.face_h])
    axes = rng.uniform(0.2, 0.5, 2)
    blob = _ellipse_pts(centre[0], centre[1], axes[0], axes[1], n=20)
    rgb = _c(rng.uniform(0, 255, 3)) if rng.uniform() < 0.6 else _c(_sample_skin(rng))
    p.fill(p.silhouette(blob), rgb)


def _draw_face(img: np.ndarray, ident: _Identity, nz: _Nuisance, scene: np.random.Generator) -> None:
    """Draws body, hair, head and features of one face onto ``img`` (RGB, in place)."""
    p = _Painter(img, ident, nz)
    _draw_body(p, scene)
    if ident.hair_style != 1:
        _draw_ears(p)
    else:
        _draw_hair_back(p, nz.hair_jitter)
    p.fill(p.silhouette(_face_outline(ident)), _c(ident.skin))
    _draw_hair_front(p, nz.hair_jitter)
    if ident.mole is not None:
        mole = _ellipse_pts(ident.mole[0], ident.mole[1], 0.035, 0.035, n=8)
        p.fill(p.surface(mole, 0.01), _c(ident.skin, 0.45))
    _draw_brows(p, nz)
    _draw_eyes(p, nz)
    if ident.beard:
        _draw_beard(p)
    _draw_nose(p)
    _draw_mouth(p, nz)
    if ident.glasses:
        _draw_glasses(p)
    if nz.occlude:
        _draw_occluder(p, scene)


def _apply_imaging(img: np.ndarray, nz: _Nuisance) -> np.ndarray:
    """Lighting gradient, gain/offset/colour cast, blur and sensor noise; returns a new uint8 RGB image."""
    size = img.shape[0]
    gx, gy = _ramp_grid(size)
    ramp = 1 + nz.light_strength * (gx * math.cos(nz.light_angle) + gy * math.sin(nz.light_angle)) * 2
    out = img.astype(np.float32) * (ramp[..., None] * nz.gain * np.asarray(nz.cast, np.float32)) + nz.offset
    if nz.blur > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), nz.blur * size / 112)
    if nz.noise > 0:
        out += np.random.default_rng(nz.noise_seed).standard_normal(out.shape, dtype=np.float32) * nz.noise
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if nz.jpeg_q:
        # Re-compression at a low quality mimics web images that were JPEG-compressed before the final save.
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, nz.jpeg_q])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else out
    return out


def render_face_image(ident: _Identity, nz: _Nuisance, size: int) -> np.ndarray:
    """Renders one face.

    Args:
        ident: Identity traits.
        nz: Imaging conditions.
        size: Output width and height in pixels.

    Returns:
        ``size`` x ``size`` x 3 uint8 RGB image.
    """
    img = np.empty((size, size, 3), np.uint8)
    scene = np.random.default_rng(nz.scene_seed)
    _draw_background(img, scene)
    _draw_face(img, ident, nz, scene)
    return _apply_imaging(img, nz)


# ---------------------------------------------------------------------------------------------------------------
# Names and pairs
# ---------------------------------------------------------------------------------------------------------------

_ONSETS = ["", "b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "r", "s", "sh",
           "st", "t", "tr", "v", "w", "z"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "rt", "x", "ck"]


def _word(rng: np.random.Generator, syllables: int) -> str:
    """A pronounceable capitalised word made of random syllables (ASCII letters only)."""
    word = "".join(
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    )
    return word.capitalize()


def make_names(seed: int, count: int) -> list[str]:
    """Unique LFW-style ``First_Last`` names, deterministic from ``seed``.

    Args:
        seed: Dataset seed.
        count: Number of names.

    Returns:
        ``count`` distinct names in generation order.
    """
    rng = _rng(seed, _STREAM_NAMES)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = f"{_word(rng, int(rng.integers(1, 4)))}_{_word(rng, int(rng.integers(2, 4)))}"
        if name not in seen and len(name) >= 5:
            seen.add(name)
            names.append(name)
    return names


def _fold_groups(rng: np.random.Generator, n_ids: int) -> list[np.ndarray]:
    """Splits identity indices into N_FOLDS disjoint random groups, each sorted."""
    return [np.sort(g) for g in np.array_split(rng.permutation(n_ids), N_FOLDS)]


def _within_pairs(rng: np.random.Generator, ids: np.ndarray, per_id: int, count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct (identity, item a, item b) with a < b, sampled without replacement."""
    candidates = [(int(i), a, b) for i in ids for a, b in itertools.combinations(range(per_id), 2)]
    chosen = rng.choice(len(candidates), size=count, replace=False)
    return sorted(candidates[k] for k in chosen)


def _across_pairs(
    rng: np.random.Generator, ids: np.ndarray, per_id: int, count: int
) -> list[tuple[int, int, int, int]]:
    """``count`` distinct (identity 1, item, identity 2, item) with identity 1 < identity 2, without replacement.

    Indexes the product (identity pair) x item x item directly, so no candidate list is materialised.
    """
    id_pairs = list(itertools.combinations(ids.tolist(), 2))
    chosen = rng.choice(len(id_pairs) * per_id * per_id, size=count, replace=False)
    out = []
    for k in chosen.tolist():
        pair, rest = divmod(k, per_id * per_id)
        a, b = divmod(rest, per_id)
        out.append((id_pairs[pair][0], a, id_pairs[pair][1], b))
    return sorted(out)


def _check_pair_capacity(name: str, wanted: int, ids_per_fold: int, per_id: int) -> None:
    """Raises if the smallest fold cannot supply ``wanted`` distinct same- or different-identity pairs."""
    same = ids_per_fold * per_id * (per_id - 1) // 2
    diff = ids_per_fold * (ids_per_fold - 1) // 2 * per_id * per_id
    if wanted > min(same, diff):
        raise ValueError(
            f"{name}={wanted} is more than the smallest fold can supply ({ids_per_fold} identities x {per_id} items "
            f"give {same} same-identity and {diff} different-identity pairs); lower it or add identities/items"
        )


# ---------------------------------------------------------------------------------------------------------------
# Generation jobs (run in pool workers)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """Renders all images of one identity: ``files[v][f]`` is frame/image ``f`` of video ``v`` (stills: v = 0)."""

    seed: int
    kind: int
    ident: int
    size: int
    quality: int
    directory: str
    files: tuple[tuple[str, ...], ...]


def _item_nuisance(seed: int, kind: int, ident: int, video: int, frame: int) -> _Nuisance:
    """Nuisance of one still image (``video`` ignored) or one frame of a YTF video."""
    if kind != _KIND_YTF:
        return _sample_nuisance(_rng(seed, _STREAM_IMAGE, kind, ident, frame))
    base = _sample_nuisance(_rng(seed, _STREAM_VIDEO, kind, ident, video))
    return _frame_nuisance(base, _rng(seed, _STREAM_MOTION, kind, ident, video), frame)


def _run_job(job: _Job) -> int:
    """Renders and writes the images of one job; returns the number of files written."""
    ident = _sample_identity(_rng(job.seed, _STREAM_IDENTITY, job.kind, job.ident))
    written = 0
    for v, names in enumerate(job.files):
        folder = Path(job.directory) / (str(v) if job.kind == _KIND_YTF else "")
        folder.mkdir(parents=True, exist_ok=True)
        for f, name in enumerate(names):
            rgb = render_face_image(ident, _item_nuisance(job.seed, job.kind, job.ident, v, f), job.size)
            # cv2 encodes BGR: convert, or every saved face would have red and blue swapped.
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, job.quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {folder / name}")
            (folder / name).write_bytes(buf.tobytes())
            written += 1
    return written


def _worker_init() -> None:
    # One OpenCV thread per worker: the pool already uses every core, more threads only contend.
    cv2.setNumThreads(1)


@contextmanager
def _opencv_threads(n: int) -> Iterator[None]:
    """Temporarily sets OpenCV's thread count in this process."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _run_jobs(jobs: list[Any], workers: int, run: Callable[[Any], int] | None = None) -> int:
    """Runs jobs serially or on a process pool; output does not depend on the choice.

    ``run`` renders one job and returns the files it wrote (a module-level function, so workers can import it):
    :func:`_run_job` by default, the IJB-C- and TinyFace-format jobs in :mod:`facetrain.data.synthetic_ijb`.
    """
    run = run or _run_job  # looked up at call time (tests replace it)
    # Daemonic processes (e.g. DataLoader workers) may not have children, so they render serially.
    if workers <= 1 or len(jobs) < 4 or mp.current_process().daemon:
        return sum(run(job) for job in jobs)
    # fork copies OpenCV's thread-pool bookkeeping but not its threads, so a child's first parallel OpenCV call
    # would wait forever on them if this process had used OpenCV before. With the pool shrunk to one thread while
    # forking, children inherit no pool. (fork rather than spawn: no re-import of the caller's __main__.)
    # A ProcessPoolExecutor, not mp.Pool: when a worker dies (a crash in a forked child), mp.Pool waits forever for
    # its lost task, and the other workers can block on a queue lock it held; the executor raises BrokenProcessPool.
    # The jobs are pure functions of their parameters, so rendering them all again in this process is exact.
    try:
        with (
            _opencv_threads(1),
            ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_init) as pool,
        ):
            return sum(pool.map(run, jobs, chunksize=4))
    except BrokenProcessPool as error:
        logger.warning("synthetic: a render worker died (%s); rendering the %d jobs in this process", error, len(jobs))
        return sum(run(job) for job in jobs)


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticFaces:
    """The synthetic face dataset: CASIA-style training tree, LFW images + ``pairs.txt``, YTF frames + ``splits.txt``.

    Call :meth:`ensure` to generate it (once) under ``root``. The defaults are tuned so that the default training
    run learns the task (high LFW accuracy after a few CPU epochs) while raw pixels and an untrained network do not.

    Attributes:
        root: Dataset directory.
        seed: Seed of every random draw; same parameters give byte-identical files.
        num_train_ids: Training identities (CASIA-WebFace layout).
        images_per_train_id: Images per training identity.
        num_lfw_ids: Held-out identities in LFW layout (split into 10 disjoint folds).
        images_per_lfw_id: Images per LFW identity.
        lfw_pairs_per_fold: Matched pairs per fold, and as many mismatched pairs.
        num_ytf_ids: Held-out identities in YouTube Faces layout (split into 10 disjoint splits).
        videos_per_ytf_id: Videos per YTF identity.
        frames_per_video: Frames per video.
        ytf_pairs_per_split: Same-person video pairs per split, and as many different-person pairs.
        image_size: Width and height of every image.
        jpeg_quality: Quality of the saved JPEG files.
        workers: Generation processes (does not change the output).
        ijbc: The IJB-C-format companion set (:class:`facetrain.data.synthetic_ijb.SyntheticIjbc`) or None; its
            evaluation set generates it on first use (``eval.ijbc.source``), not :meth:`ensure`.
        tinyface: The TinyFace-format companion set (``SyntheticTinyFace``) or None, likewise.
    """

    root: str | os.PathLike[str]
    seed: int = 0
    num_train_ids: int = 300
    images_per_train_id: int = 20
    num_lfw_ids: int = 300
    images_per_lfw_id: int = 5
    lfw_pairs_per_fold: int = 150
    num_ytf_ids: int = 100
    videos_per_ytf_id: int = 3
    frames_per_video: int = 8
    ytf_pairs_per_split: int = 25
    image_size: int = 112
    jpeg_quality: int = 95
    workers: int = 2
    ijbc: Any = None
    tinyface: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        self._validate()

    def _validate(self) -> None:
        """Checks every argument; each error names the offending argument."""
        minimum = {
            "num_train_ids": 1, "images_per_train_id": 1, "num_lfw_ids": 2 * N_FOLDS, "images_per_lfw_id": 2,
            "lfw_pairs_per_fold": 1, "num_ytf_ids": 2 * N_FOLDS, "videos_per_ytf_id": 2, "frames_per_video": 1,
            "ytf_pairs_per_split": 1, "image_size": 32, "jpeg_quality": 1, "workers": 1, "seed": 0,
        }  # fmt: skip
        maximum = {"num_train_ids": 10**7, "images_per_train_id": 999, "images_per_lfw_id": 9999, "jpeg_quality": 100}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < low or value > maximum.get(name, value):
                bound = f"between {low} and {maximum[name]}" if name in maximum else f">= {low}"
                raise ValueError(f"{name} must be {bound}, got {value}")
        _check_pair_capacity(
            "lfw_pairs_per_fold", self.lfw_pairs_per_fold, self.num_lfw_ids // N_FOLDS, self.images_per_lfw_id
        )
        _check_pair_capacity(
            "ytf_pairs_per_split", self.ytf_pairs_per_split, self.num_ytf_ids // N_FOLDS, self.videos_per_ytf_id
        )

    # -- layout --------------------------------------------------------------------------------------------------

    @property
    def root_path(self) -> Path:
        """``root`` as a ``Path``."""
        return Path(self.root)

    @property
    def train_root(self) -> Path:
        """CASIA-WebFace-style tree ``0000000/001.jpg``."""
        return self.root_path / "casia"

    @property
    def lfw_root(self) -> Path:
        """LFW-style tree ``Name/Name_0001.jpg``."""
        return self.root_path / "lfw"

    @property
    def lfw_pairs(self) -> Path:
        """LFW View-2 ``pairs.txt`` (beside the ``lfw/`` folder, as distributed)."""
        return self.root_path / "pairs.txt"

    @property
    def ytf_root(self) -> Path:
        """YouTube Faces tree ``Name/<video>/aligned_detect_<video>.<frame>.jpg``."""
        return self.root_path / "ytf" / "aligned_images_DB"

    @property
    def ytf_splits(self) -> Path:
        """YouTube Faces ``splits.txt``."""
        return self.root_path / "ytf" / "splits.txt"

    @property
    def manifest_path(self) -> Path:
        """JSON record of the parameters the dataset under ``root`` was generated with."""
        return self.root_path / "manifest.json"

    def params(self) -> dict[str, int]:
        """Parameters that determine the generated files (everything except ``root`` and ``workers``)."""
        skip = ("root", "workers", "ijbc", "tinyface")  # the companion sets keep their own manifests
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def lfw_names(self) -> list[str]:
        """Names of the LFW-format identities (index = identity number)."""
        # Sorted, so identity order (and hence pairs.txt order) is alphabetical as in the official file.
        return sorted(make_names(self.seed, self.num_lfw_ids + self.num_ytf_ids)[: self.num_lfw_ids])

    def ytf_names(self) -> list[str]:
        """Names of the YTF-format identities, disjoint from the LFW names."""
        return sorted(make_names(self.seed, self.num_lfw_ids + self.num_ytf_ids)[self.num_lfw_ids :])

    def render(self, split: str, identity: int, image: int, video: int = 0) -> np.ndarray:
        """Renders one image exactly as :meth:`ensure` does, before JPEG encoding (for inspection and tests).

        Args:
            split: ``"train"``, ``"lfw"`` or ``"ytf"``.
            identity: 0-based identity index (folder order for train; sorted-name order for LFW and YTF).
            image: 0-based image index (frame index for YTF; file numbers are this + 1).
            video: 0-based video index (YTF only).

        Returns:
            ``image_size`` x ``image_size`` x 3 uint8 RGB image.
        """
        kinds = {"train": _KIND_TRAIN, "lfw": _KIND_LFW, "ytf": _KIND_YTF}
        if split not in kinds:
            raise ValueError(f"split must be one of {sorted(kinds)}, got {split!r}")
        kind = kinds[split]
        ident = _sample_identity(_rng(self.seed, _STREAM_IDENTITY, kind, identity))
        return render_face_image(ident, _item_nuisance(self.seed, kind, identity, video, image), self.image_size)

    # -- generation ----------------------------------------------------------------------------------------------

    def ensure(self) -> SyntheticFaces:
        """Generates the dataset under ``root`` unless an identical one is already there.

        Idempotent and cheap when ``root/manifest.json`` matches the parameters. Otherwise the dataset is rendered
        into a temporary sibling directory and renamed into place, so an interrupted run never leaves a partial
        dataset that looks complete. An exclusive ``fcntl`` lock on ``<root>.lock`` makes concurrent callers (DDP
        ranks, parallel tests) generate it once; the others wait and reuse it.

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: If ``root`` holds files that this class did not write (they are never deleted).
        """
        manifest = self._manifest()
        if self._stale_reason(manifest) is None:
            return self
        root = self.root_path
        root.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(Path(f"{root}.lock")):
            reason = self._stale_reason(manifest)
            if reason is None:  # another process generated it while we waited for the lock
                return self
            self._check_replaceable()
            if root.exists():
                logger.warning("Regenerating synthetic faces at %s: %s", root, reason)
            self._generate(manifest)
        return self

    def _manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` must hold for the dataset under ``root`` to be reused."""
        counts = {
            "train_images": self.num_train_ids * self.images_per_train_id,
            "lfw_images": self.num_lfw_ids * self.images_per_lfw_id,
            "lfw_pairs": N_FOLDS * 2 * self.lfw_pairs_per_fold,
            "ytf_frames": self.num_ytf_ids * self.videos_per_ytf_id * self.frames_per_video,
            "ytf_pairs": N_FOLDS * 2 * self.ytf_pairs_per_split,
        }
        return {"generator": __name__, "format_version": FORMAT_VERSION, "params": self.params(), "counts": counts}

    def _stale_reason(self, manifest: dict[str, Any]) -> str | None:
        """Why the dataset under ``root`` cannot be reused, or None if it matches ``manifest``."""
        if not self.root_path.exists():
            return f"{self.root} does not exist"
        try:
            found = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{self.manifest_path} is missing"
        except (OSError, ValueError) as err:
            return f"{self.manifest_path} is unreadable ({err})"
        if not isinstance(found, dict) or found.get("format_version") != FORMAT_VERSION:
            version = found.get("format_version") if isinstance(found, dict) else None
            return f"format version changed ({version} -> {FORMAT_VERSION})"
        old = found.get("params") or {}
        changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in manifest["params"].items() if old.get(k) != v]
        return f"parameters changed ({', '.join(changed)})" if changed else None

    def _check_replaceable(self) -> None:
        """Refuses to replace a directory holding anything this class does not write."""
        root = self.root_path
        if root.exists() and not root.is_dir():
            raise ValueError(f"root {root} exists and is not a directory")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWN_ENTRIES) if root.exists() else []
        if foreign:
            raise ValueError(
                f"root {root} holds files that are not a synthetic dataset ({', '.join(foreign[:5])}); "
                "refusing to replace it, choose another root or delete it"
            )

    def _generate(self, manifest: dict[str, Any]) -> None:
        """Renders everything into a temporary sibling of ``root`` and swaps it in."""
        root = self.root_path
        start = time.perf_counter()
        for leftover in root.parent.glob(f".{root.name}.tmp-*"):  # from crashed runs; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            written = _run_jobs(self._jobs(tmp), self.workers)
            self._write_protocols(tmp)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            _swap_in(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        c = manifest["counts"]
        logger.info(
            "Generated synthetic faces at %s in %.1fs: %d images (train %d ids x %d, LFW %d ids / %d pairs, "
            "YTF %d ids / %d videos / %d pairs)",
            root, time.perf_counter() - start, written, self.num_train_ids, self.images_per_train_id,
            self.num_lfw_ids, c["lfw_pairs"], self.num_ytf_ids, self.num_ytf_ids * self.videos_per_ytf_id,
            c["ytf_pairs"],
        )  # fmt: skip

    def _jobs(self, base: Path) -> list[_Job]:
        """One rendering job per identity, writing into the tree under ``base``."""
        common = {"seed": self.seed, "size": self.image_size, "quality": self.jpeg_quality}
        jobs = [
            _Job(kind=_KIND_TRAIN, ident=i, directory=str(base / "casia" / f"{i:07d}"),
                 files=(tuple(f"{k + 1:03d}.jpg" for k in range(self.images_per_train_id)),), **common)
            for i in range(self.num_train_ids)
        ]  # fmt: skip
        for i, name in enumerate(self.lfw_names()):
            files = (tuple(f"{name}_{k + 1:04d}.jpg" for k in range(self.images_per_lfw_id)),)
            jobs.append(_Job(kind=_KIND_LFW, ident=i, directory=str(base / "lfw" / name), files=files, **common))
        ytf_dir = base / "ytf" / "aligned_images_DB"
        for i, name in enumerate(self.ytf_names()):
            files = tuple(
                tuple(f"aligned_detect_{v}.{f + 1}.jpg" for f in range(self.frames_per_video))
                for v in range(self.videos_per_ytf_id)
            )
            jobs.append(_Job(kind=_KIND_YTF, ident=i, directory=str(ytf_dir / name), files=files, **common))
        return jobs

    def _write_protocols(self, base: Path) -> None:
        """Writes ``pairs.txt`` and ``ytf/splits.txt`` with identity-disjoint folds."""
        names = self.lfw_names()
        rng = _rng(self.seed, _STREAM_PAIRS, _KIND_LFW)
        folds = []
        for ids in _fold_groups(rng, self.num_lfw_ids):
            matched = [
                (names[i], a + 1, b + 1)
                for i, a, b in _within_pairs(rng, ids, self.images_per_lfw_id, self.lfw_pairs_per_fold)
            ]
            mismatched = [
                (names[i], a + 1, names[j], b + 1)
                for i, a, j, b in _across_pairs(rng, ids, self.images_per_lfw_id, self.lfw_pairs_per_fold)
            ]
            folds.append((matched, mismatched))
        write_lfw_pairs(base / "pairs.txt", folds)
        names = self.ytf_names()
        rng = _rng(self.seed, _STREAM_PAIRS, _KIND_YTF)
        rows = []
        for split, ids in enumerate(_fold_groups(rng, self.num_ytf_ids), start=1):
            same = [
                (f"{names[i]}/{a}", f"{names[i]}/{b}", 1)
                for i, a, b in _within_pairs(rng, ids, self.videos_per_ytf_id, self.ytf_pairs_per_split)
            ]
            diff = [
                (f"{names[i]}/{a}", f"{names[j]}/{b}", 0)
                for i, a, j, b in _across_pairs(rng, ids, self.videos_per_ytf_id, self.ytf_pairs_per_split)
            ]
            rows.extend((split, k, a, b, s) for k, (a, b, s) in enumerate(same + diff, start=1))
        write_ytf_splits(base / "ytf" / "splits.txt", rows)


def _swap_in(tmp: Path, root: Path) -> None:
    """Atomically puts the finished ``tmp`` tree at ``root``, deleting any previous dataset there."""
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-old-", dir=root.parent))
    os.replace(root, old / root.name)
    os.replace(tmp, root)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive ``fcntl`` lock on ``path`` (created if needed; left in place to avoid unlink races)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
