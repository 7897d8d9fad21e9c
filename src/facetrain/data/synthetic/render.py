"""The face renderer: background clutter, body, hair, head and features drawn with OpenCV, then the imaging chain.

Everything is a pure function of the identity traits and the nuisance (whose ``scene_seed`` and ``noise_seed`` seed
the clutter, clothing, occluder and sensor noise), so a face is the same in any process and any order.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from facetrain.data.synthetic.painter import Painter, ellipse_pts, shade
from facetrain.data.synthetic.traits import NUISANCE, Identity, Nuisance, sample_skin

__all__ = ["render_face_image"]


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
    for _ in range(int(rng.integers(0, NUISANCE["clutter_max"] + 1))):
        rgb = shade(rng.uniform(0, 255, 3))
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


def _draw_body(p: Painter, rng: np.random.Generator) -> None:
    """Neck and shoulders; the clothing colour is a per-image nuisance."""
    i = p.ident
    neck = np.array([[-0.42, 0.4], [0.42, 0.4], [0.48, 2.6], [-0.48, 2.6]]) * [i.face_w, i.face_h]
    p.fill(p.silhouette(neck), shade(i.skin, 0.8))
    w = rng.uniform(1.8, 2.6)
    top = i.face_h + rng.uniform(0.25, 0.55)
    shoulders = np.array(
        [[-0.45, top - 0.1], [0.45, top - 0.1], [w, top + 0.5], [w + 0.3, 4.0], [-w - 0.3, 4.0], [-w, top + 0.5]]
    )
    p.fill(p.silhouette(shoulders), shade(rng.uniform(0, 255, 3)))


def _face_outline(i: Identity, n: int = 40) -> np.ndarray:
    """Face contour: an ellipse whose lower half narrows towards the chin by the ``jaw`` trait."""
    pts = ellipse_pts(0.0, 0.0, i.face_w, i.face_h, n=n)
    below = np.clip(pts[:, 1] / i.face_h, 0, 1)
    pts[:, 0] *= 1 - i.jaw * below**1.6
    return pts


def _hair_cap(i: Identity, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Hair polygon covering the top of the head down to the hairline (face units).

    Returns:
        The outer part (volume around the skull, follows the silhouette) and the hairline part (on the forehead
        surface, follows yaw and pitch); concatenated in this order they form the polygon.
    """
    top, side = i.hair_top * (1 + jitter), i.hair_side * (1 + jitter)
    outer = ellipse_pts(0.0, 0.0, i.face_w + side, i.face_h + top, math.pi, 2 * math.pi, 24)
    side_y = i.hair_side_len if i.hair_style != 3 else min(i.hair_side_len, -0.2)
    right = [[i.face_w + side * 0.8, side_y], [i.face_w * 0.9, side_y]]
    # Hairline from the right temple over the forehead to the left temple, dipping at the parting.
    xs = np.linspace(i.face_w * 0.88, -i.face_w * 0.88, 15)
    ys = i.hairline + 0.22 * (np.abs(xs) / i.face_w) ** 2 + 0.05 * np.exp(-(((xs - i.hair_part) / 0.15) ** 2))
    temple = np.stack([xs, np.minimum(ys, side_y)], axis=1)
    left = [[-i.face_w * 0.9, side_y], [-i.face_w - side * 0.8, side_y]]
    return np.concatenate([outer, right]), np.concatenate([temple, left])


def _draw_hair_back(p: Painter, jitter: float) -> None:
    """Long hair hanging behind the head (drawn before the face)."""
    i = p.ident
    w = i.face_w + i.hair_side * (1 + jitter) + 0.1
    back = np.concatenate(
        [
            ellipse_pts(0.0, 0.0, w, i.face_h + i.hair_top, math.pi, 2 * math.pi, 20),
            [[w * 0.95, i.hair_len], [-w * 0.95, i.hair_len]],
        ]
    )
    p.fill(p.silhouette(back), shade(i.hair, 0.85))


def _draw_hair_front(p: Painter, jitter: float) -> None:
    """Hair cap with hairline on the forehead, plus a jagged fringe for style 2."""
    i = p.ident
    outer, hairline = _hair_cap(i, jitter)
    p.fill(np.concatenate([p.silhouette(outer), p.surface(hairline)]), shade(i.hair))
    if i.hair_style == 2:
        xs = np.linspace(-i.face_w * 0.85, i.face_w * 0.85, 17)
        bottom = i.eye_y - i.brow_gap - 0.06 + 0.07 * np.abs(np.sin(7 * xs + i.fringe_phase))
        fringe = np.concatenate(
            [np.stack([xs, bottom], 1), [[i.face_w * 0.8, i.hairline], [-i.face_w * 0.8, i.hairline]]]
        )
        p.fill(p.surface(fringe), shade(i.hair, 0.95))


def _draw_ears(p: Painter) -> None:
    """Ears on the silhouette (not drawn under long hair, which would cover them)."""
    i = p.ident
    for s in (-1, 1):
        ear = ellipse_pts(s * i.face_w * 0.97, i.eye_y + 0.12, 0.13, i.ear_size, n=16)
        p.fill(p.silhouette(ear), shade(i.skin, 0.92))
        inner = ellipse_pts(s * i.face_w * 1.0, i.eye_y + 0.12, 0.06, i.ear_size * 0.6, n=12)
        p.fill(p.silhouette(inner), shade(i.skin, 0.75))


def _draw_eyes(p: Painter, nz: Nuisance) -> None:
    """Almond sclera, iris clipped to the lids, pupil, lid line, per eye."""
    i = p.ident
    eh = i.eye_h * max(nz.eye_open, 0.15)
    for s in (-1, 1):
        ex = s * i.eye_dx
        almond = ellipse_pts(ex, i.eye_y, i.eye_w, eh, n=24)
        p.fill(p.surface(almond), (238.0, 236.0, 230.0))
        r = i.iris_r * i.eye_h
        iris = ellipse_pts(ex + nz.gaze * i.eye_w * 0.5, i.eye_y, r, r, n=20)
        # Clip the iris to the almond so a big iris looks covered by the lids, not pasted on the skin.
        dx = np.clip((iris[:, 0] - ex) / i.eye_w, -1, 1)
        lim = eh * np.sqrt(1 - dx**2)
        iris[:, 1] = np.clip(iris[:, 1], i.eye_y - lim, i.eye_y + lim)
        p.fill(p.surface(iris, 0.01), shade(i.iris))
        pupil = ellipse_pts(ex + nz.gaze * i.eye_w * 0.5, i.eye_y, r * 0.45, min(r * 0.45, eh * 0.8), n=12)
        p.fill(p.surface(pupil, 0.01), (15.0, 12.0, 12.0))
        upper = ellipse_pts(ex, i.eye_y, i.eye_w * 1.05, eh * 1.1, math.pi, 2 * math.pi, 14)
        p.line(p.surface(upper, 0.01), (30.0, 22.0, 20.0), 0.035)


def _draw_brows(p: Painter, nz: Nuisance) -> None:
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
        p.fill(p.surface(np.concatenate([upper, lower]), 0.02), shade(i.hair, 0.75))


def _draw_nose(p: Painter) -> None:
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
    p.fill(p.surface(wedge, dz), shade(i.skin, 0.86))
    ridge = np.array([[0.0, y0], [0.0, y1]])
    p.line(p.surface(ridge, np.array([0.05, i.nose_depth])), shade(i.skin, 1.06), 0.03)
    for s in (-1, 1):
        nostril = ellipse_pts(s * w * 0.45, y1 + 0.02, w * 0.28, 0.025, n=10)
        p.fill(p.surface(nostril, 0.12), shade(i.skin, 0.45))


def _band(x: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Polygon between two curves sampled at the same ``x``: along ``upper``, then back along ``lower``."""
    return np.concatenate([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]])


def _draw_mouth(p: Painter, nz: Nuisance) -> None:
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
    p.fill(p.surface(_band(x, top, mid), 0.03), shade(i.lips, 0.9))
    p.fill(p.surface(_band(x, mid + gap, bottom), 0.03), shade(i.lips))


def _draw_beard(p: Painter) -> None:
    """Moustache (1), goatee (2) or full beard with moustache (3), in the hair colour."""
    i = p.ident
    rgb = shade(i.hair, 0.9)
    if i.beard in (1, 3):
        x = np.linspace(-i.mouth_w * 1.1, i.mouth_w * 1.1, 9)
        upper = i.mouth_y - 0.05 - 0.02 * np.cos(x * 4)
        p.fill(p.surface(_band(x, upper, i.mouth_y - 0.13 + 0.03 * (x / i.mouth_w) ** 2), 0.04), rgb)
    if i.beard == 2:
        chin = ellipse_pts(0.0, (i.mouth_y + i.face_h) / 2 + 0.05, i.mouth_w * 0.7, (i.face_h - i.mouth_y) / 2)
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


def _draw_glasses(p: Painter) -> None:
    """Round or rectangular frames, standing in front of the face so they move with the head turn."""
    i = p.ident
    rgb = shade(i.glasses_rgb)
    r = i.eye_w * 1.25
    for s in (-1, 1):
        ex = s * i.eye_dx
        if i.glasses == 1:
            rim = ellipse_pts(ex, i.eye_y, r, r * 0.85, n=24)
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


def _draw_occluder(p: Painter, rng: np.random.Generator) -> None:
    """A hand- or object-like blob over part of the face."""
    i = p.ident
    centre = np.array([rng.uniform(-0.9, 0.9) * i.face_w, rng.uniform(-0.4, 1.0) * i.face_h])
    axes = rng.uniform(0.2, 0.5, 2)
    blob = ellipse_pts(centre[0], centre[1], axes[0], axes[1], n=20)
    rgb = shade(rng.uniform(0, 255, 3)) if rng.uniform() < 0.6 else shade(sample_skin(rng))
    p.fill(p.silhouette(blob), rgb)


def _draw_face(img: np.ndarray, ident: Identity, nz: Nuisance, scene: np.random.Generator) -> None:
    """Draws body, hair, head and features of one face onto ``img`` (RGB, in place)."""
    p = Painter(img, ident, nz)
    _draw_body(p, scene)
    if ident.hair_style != 1:
        _draw_ears(p)
    else:
        _draw_hair_back(p, nz.hair_jitter)
    p.fill(p.silhouette(_face_outline(ident)), shade(ident.skin))
    _draw_hair_front(p, nz.hair_jitter)
    if ident.mole is not None:
        mole = ellipse_pts(ident.mole[0], ident.mole[1], 0.035, 0.035, n=8)
        p.fill(p.surface(mole, 0.01), shade(ident.skin, 0.45))
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


def _apply_imaging(img: np.ndarray, nz: Nuisance) -> np.ndarray:
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


def render_face_image(ident: Identity, nz: Nuisance, size: int) -> np.ndarray:
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
