"""Drawing in face space: projects face-unit points through head pose and image transform and draws them with cv2.

Inner features lie on a head ellipsoid (``face_w``, ``face_h``, ``depth``) rotated by yaw and pitch, so they shift
with the head turn while outline-type shapes (contour, hair volume) follow the silhouette. Polygons are drawn
anti-aliased with sub-pixel precision (cv2 fixed-point coordinates).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facetrain.data.synthetic.traits import Identity, Nuisance, clip_rgb

__all__ = ["Painter", "ellipse_pts", "shade"]


def ellipse_pts(
    cx: float, cy: float, ax: float, ay: float, t0: float = 0.0, t1: float = 2 * math.pi, n: int = 28
) -> np.ndarray:
    """Points on an axis-aligned elliptic arc (angle 0 = +x, increasing towards +y, i.e. downwards)."""
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def shade(rgb: tuple[float, float, float] | np.ndarray, k: float = 1.0) -> tuple[float, float, float]:
    """Scales a colour for cv2 drawing calls (which want plain floats)."""
    return clip_rgb([c * k for c in rgb])


class Painter:
    """Projects face-space points through head pose and image transform and draws them anti-aliased."""

    _SHIFT = 4  # cv2 fixed-point sub-pixel bits

    def __init__(self, img: np.ndarray, ident: Identity, nz: Nuisance) -> None:
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
