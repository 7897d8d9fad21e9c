"""Who is drawn and under which conditions: identity traits, per-image nuisances and the smooth motion of a video.

An identity is a trait vector in face units (face half-width ~1, y pointing down): face shape, skin, hair, eyes,
brows, nose, mouth, ears, beard, glasses and a mole. A nuisance is what changes from one image of a person to the
next: head pose (roll, and a 3-D yaw and pitch of the inner features), scale and shift, lighting gradient,
gain/offset/colour cast, expression, blur, noise, JPEG re-compression and occluders. A video draws one nuisance and
moves smoothly around it, so frames of one video are far more alike than two videos of one person (as in YouTube
Faces, Wolf et al., CVPR 2011).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "NUISANCE",
    "Identity",
    "Nuisance",
    "clip_rgb",
    "frame_nuisance",
    "sample_identity",
    "sample_nuisance",
    "sample_skin",
]


@dataclass(frozen=True)
class Identity:
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


def clip_rgb(values: np.ndarray | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """A colour as a plain float triple, clipped to 0..255 (cv2 drawing calls want Python floats)."""
    r, g, b = (float(min(255.0, max(0.0, v))) for v in values)
    return r, g, b


def _colour(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, float, float]:
    """Picks a palette colour with per-channel jitter, so identities sharing a palette entry still differ."""
    rgb = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return clip_rgb(rgb)


def sample_skin(rng: np.random.Generator) -> tuple[float, float, float]:
    """Skin tone on a light-to-dark continuum with a small hue shift."""
    t = rng.uniform(0.0, 1.0)
    light, dark = np.array([236.0, 196.0, 170.0]), np.array([95.0, 62.0, 45.0])
    rgb = light * (1 - t) + dark * t + rng.normal(0.0, 7.0, 3)
    return clip_rgb(rgb)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draws the traits of one person."""
    u = rng.uniform
    skin = sample_skin(rng)
    face_w, face_h = u(0.86, 1.08), u(1.2, 1.48)
    eye_y = u(-0.38, -0.12)
    nose_len = u(0.3, 0.52)
    mouth_y = min(eye_y + nose_len + u(0.2, 0.36), face_h * 0.72)
    hair = _colour(_HAIR_PALETTE, rng, 12.0)
    lips = clip_rgb(np.array(skin) * u(0.55, 0.8) + np.array([u(25, 70), 0, u(0, 20)]))
    return Identity(
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
class Nuisance:
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
NUISANCE = {
    "roll_sd": 6.0, "roll_max": 15.0, "yaw": 0.3, "pitch": 0.12, "scale": 0.1, "shift": 0.045,
    "gain": (0.75, 1.25), "offset": 15.0, "cast": 0.07, "light": 0.5, "blur": (0.0, 0.0, 0.5, 0.8, 1.1),
    "noise": 6.0, "jpeg_p": 0.15, "jpeg_q": (40, 80), "occlude_p": 0.06, "clutter_max": 4, "open_p": 0.3,
}  # fmt: skip


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    """Draws the imaging conditions of one still image (or the base conditions of one video)."""
    u, r = rng.uniform, NUISANCE
    return Nuisance(
        roll=float(np.clip(rng.normal(0.0, r["roll_sd"]), -r["roll_max"], r["roll_max"])),
        yaw=u(-r["yaw"], r["yaw"]), pitch=u(-r["pitch"], r["pitch"]),
        scale=u(1 - r["scale"], 1 + r["scale"]), dx=u(-r["shift"], r["shift"]), dy=u(-r["shift"], r["shift"]),
        gain=u(*r["gain"]), offset=u(-r["offset"], r["offset"]),
        cast=clip_rgb(u(1 - r["cast"], 1 + r["cast"], 3)),
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


def frame_nuisance(base: Nuisance, motion_rng: np.random.Generator, frame: int) -> Nuisance:
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
