"""5-point face alignment: a similarity transform of detected landmarks onto a fixed template.

Templates (l-eye, r-eye, nose, l-mouth, r-mouth; x, y in pixels of the output crop), docs/protocols.md §4.4:

* ``112x96`` (height × width) — SphereFace / CosFace / AM-Softmax / cam-softmax [S4][S3][S30];
* ``112x112`` — InsightFace ``arcface_src`` (``python-package/insightface/utils/face_align.py``), the 112×96
  template shifted by +8 px in x [S28a].

The transform is Umeyama's least-squares similarity (rotation, uniform scale, translation; no shear), the model
of SphereFace's ``cp2tform(..., 'similarity')`` [S4] and InsightFace's ``skimage SimilarityTransform`` [S28a]
(implemented here so skimage is not a dependency), followed by ``cv2.warpAffine`` with a black border as in
InsightFace's ``norm_crop``.

Landmarks are (x, y) pixel positions in the image as displayed, i.e. after its EXIF orientation is applied (how
OpenCV and the usual detectors read it); "left eye" is the eye on the image's left (the person's right eye).
Landmark files are UTF-8 (a byte-order mark and CRLF endings are fine). Files (``scripts/align_faces.py``):

* CSV: ``path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`` (11 columns, point order as above, quoted paths allowed, ``#``
  comment lines and blank lines skipped). The header line is optional and recognised by its column names (every
  field filled in, none a number), so a header-less file whose first row is a "no face found" row
  (``img.jpg,,,,,,,,,,``) has that row reported, not dropped;
* InsightFace ``.lst`` (tab-separated): ``aligned<TAB>path<TAB>label<TAB>x1 y1 x2 y2 (bbox)<TAB>10 landmark values``,
  17 columns. The 10 values are all five x then all five y (InsightFace ``face_preprocess.parse_lst_line`` reads
  columns 7–16 with ``reshape((2, 5)).T``; docs/protocols.md §4.1 [S26] gives the column positions). Entries with 3
  columns (already aligned, no landmarks) or 7 (bbox only) cannot be aligned and are reported.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facetrain.data.decode import decode_checked
from facetrain.utils.io import atomic_write

# docs/protocols.md §4.4 [S4][S28a]: (x, y) of l-eye, r-eye, nose, l-mouth, r-mouth.
SPHEREFACE_112x96 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_112x112 = SPHEREFACE_112x96 + np.array([8.0, 0.0])
# name -> (template points, (height, width) of the output crop)
TEMPLATES: dict[str, tuple[np.ndarray, tuple[int, int]]] = {
    "112x112": (ARCFACE_112x112, (112, 112)),
    "112x96": (SPHEREFACE_112x96, (112, 96)),
}
MIN_LANDMARK_SPREAD = 1.0  # px RMS distance from the centroid; below it the 5 points carry no geometry


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama, TPAMI 1991).

    Args:
        src: ``N×2`` source points (N >= 2).
        dst: ``N×2`` target points.

    Returns:
        ``2×3`` matrix ``M`` with ``dst ≈ M[:, :2] @ p + M[:, 2]``, ``M[:, :2] = s·R`` (R a rotation, s > 0).

    Raises:
        ValueError: Shapes differ or are not ``N×2`` with N >= 2, non-finite values, or all source points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"similarity_transform needs two N×2 arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("similarity_transform: landmarks contain NaN or infinity")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_d, dst_d = src - src_mean, dst - dst_mean
    src_var = (src_d**2).sum() / n
    if src_var < 1e-12:
        raise ValueError("similarity_transform: all source points coincide")
    cov = dst_d.T @ src_d / n
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0  # the best orthogonal map is a reflection: take the best proper rotation instead
    if np.linalg.matrix_rank(cov) == 1:
        # Collinear points: the sign of the second singular direction is free; pick the one giving a rotation.
        d[1] = 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(sigma @ d) / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def get_template(template: str | np.ndarray, size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``(points, (height, width))`` of a named template, or of explicit points plus ``size``."""
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise ValueError(f"unknown alignment template {template!r}; choose one of {sorted(TEMPLATES)}")
        points, default_size = TEMPLATES[template]
        return points, size or default_size
    if size is None:
        raise ValueError("align_face: an explicit template array needs size=(height, width)")
    return np.asarray(template, dtype=np.float64), size


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: str | np.ndarray = "112x112",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Warp ``image`` so its 5 ``landmarks`` land on ``template``.

    Args:
        image: ``H×W×C`` (or ``H×W``) array, any channel order.
        landmarks: ``5×2`` (x, y) in image pixels, order l-eye, r-eye, nose, l-mouth, r-mouth.
        template: ``"112x112"``, ``"112x96"`` or a ``5×2`` array (then ``size`` is required).
        size: Output ``(height, width)``; defaults to the named template's.

    Raises:
        ValueError: Landmarks are not ``5×2`` finite values, or are degenerate (spread below 1 px).
    """
    points, (height, width) = get_template(template, size)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != points.shape:
        raise ValueError(f"align_face: landmarks must have shape {points.shape}, got {landmarks.shape}")
    if not np.isfinite(landmarks).all():
        raise ValueError("degenerate landmarks: NaN or infinity")
    spread = float(np.sqrt(((landmarks - landmarks.mean(axis=0)) ** 2).sum(axis=1).mean()))
    if spread < MIN_LANDMARK_SPREAD:
        raise ValueError(f"degenerate landmarks: the 5 points lie within {spread:.3g} px of their centre")
    matrix = similarity_transform(landmarks, points)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)


# ---------------------------------------------------------------------------------------------------------------
# Landmark files
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandmarkRow:
    """One parsed entry: the image path as written in the file and its ``5×2`` landmarks."""

    lineno: int
    path: str
    landmarks: np.ndarray


@dataclass(frozen=True)
class RowError:
    """An entry that cannot be aligned: its line, its path if known, and why."""

    lineno: int
    path: str
    reason: str


def _floats(values: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def _is_header(fields: list[str]) -> bool:
    """True for a row of column names: every field filled in and no landmark field a number.

    Judged by the names rather than by "the first row does not parse": a header-less file's first row is often a
    "no face found" row (``img.jpg,,,,,,,,,,``), which must be reported, not dropped as a header.
    """
    return all(fields) and all(_floats([v]) is None for v in fields[1:])


def _landmark_problem(values: list[str]) -> str:
    """Why 10 landmark fields that do not all parse are unusable."""
    empty = sum(1 for v in values if not v)
    if empty == len(values):
        return "no landmarks (all 10 values empty: no face found?)"
    if empty:
        return f"{empty} of 10 landmark values empty"
    return "non-numeric landmark value"


def _parse_csv(lines: Iterable[str]) -> Iterator[LandmarkRow | RowError]:
    first = True
    for lineno, fields in enumerate(csv.reader(lines), start=1):
        if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in fields]
        is_first, first = first, False
        if is_first and _is_header(fields):
            continue
        if len(fields) != 11:
            yield RowError(lineno, fields[0], f"expected 11 CSV columns (path,x1,y1,...,x5,y5), got {len(fields)}")
            continue
        values = _floats(fields[1:])
        if values is None:
            yield RowError(lineno, fields[0], _landmark_problem(fields[1:]))
            continue
        yield LandmarkRow(lineno, fields[0], values.reshape(5, 2))


def _parse_lst(lines: Iterable[str]) -> Iterator[LandmarkRow | RowError]:
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        path = fields[1] if len(fields) > 1 else fields[0]
        if len(fields) in (3, 7):
            what = "already aligned, no bbox" if len(fields) == 3 else "bbox only"
            yield RowError(lineno, path, f"no landmarks in this .lst entry ({len(fields)} columns: {what})")
            continue
        if len(fields) != 17:
            yield RowError(
                lineno, path, f"expected 17 tab-separated .lst columns (aligned, path, label, 4 bbox, 10 landmarks), "
                f"got {len(fields)}"
            )  # fmt: skip
            continue
        values = _floats(fields[7:17])
        if values is None:
            yield RowError(lineno, path, "non-numeric landmark value")
            continue
        yield LandmarkRow(lineno, path, values.reshape(2, 5).T.copy())  # x1..x5, y1..y5 -> (x, y) rows


def parse_landmarks(path: str | os.PathLike, fmt: str = "auto") -> Iterator[LandmarkRow | RowError]:
    """Parse a landmark file (``fmt``: ``csv``, ``lst`` or ``auto`` = by extension, ``.lst`` means lst).

    Yields one :class:`LandmarkRow` per usable entry and one :class:`RowError` per entry that is not (wrong column
    count, empty or non-numeric values, no landmarks, a duplicate path), each with its 1-based line number. The file is
    read BOM-tolerantly (:func:`facetrain.data.protocols.read_text_lines`).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: An unknown ``fmt``, or the file is not UTF-8 text (naming the line).
    """
    path = Path(path)
    if fmt == "auto":
        fmt = "lst" if path.suffix.lower() == ".lst" else "csv"
    if fmt not in ("csv", "lst"):
        raise ValueError(f"landmark file format must be csv, lst or auto, got {fmt!r}")
    from facetrain.data.protocols import read_text_lines  # BOM-tolerant, as for the protocol files

    lines = read_text_lines(path, "landmark file")
    seen: dict[str, int] = {}
    for item in _parse_csv(lines) if fmt == "csv" else _parse_lst(lines):
        if isinstance(item, LandmarkRow):
            if item.path in seen:
                yield RowError(item.lineno, item.path, f"duplicate path (first at line {seen[item.path]})")
                continue
            seen[item.path] = item.lineno
        yield item


# ---------------------------------------------------------------------------------------------------------------
# One file (the unit of work of scripts/align_faces.py; module level so spawned worker processes can import it)
# ---------------------------------------------------------------------------------------------------------------


def read_bgr(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to BGR in its displayed orientation (EXIF applied, as landmark detectors see it),
    refusing empty, truncated, undecodable or damaged files (ValueError with the reason).

    The check is :func:`facetrain.data.decode.decode_checked`, the one that ``data.verify_images=decode`` runs on
    training images, so a JPEG damaged in the middle is refused here too instead of giving a half-grey crop.
    """
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"cannot read: {error.strerror or error}") from None
    image, problem = decode_checked(data)
    if problem is not None or image is None:
        raise ValueError(problem or "undecodable image")
    return image


def align_file(
    src: str | os.PathLike, dst: str | os.PathLike, landmarks: np.ndarray, template: str, quality: int = 95
) -> None:
    """Align one image file and write the crop to ``dst`` (atomically: a temporary file, then a rename).

    Raises:
        ValueError: Missing or unreadable image, degenerate landmarks, or an encoding failure.
    """
    if not os.path.isfile(src):
        raise ValueError(f"image not found: {os.fspath(src)}")
    aligned = align_face(read_bgr(src), landmarks, template)
    dst = Path(dst)
    ext = dst.suffix.lower() or ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, aligned, params)
    if not ok:
        raise ValueError(f"cannot encode {ext}")
    with atomic_write(dst, "wb") as f:
        f.write(buf.tobytes())


AlignJob = tuple[
    int, str, str, str, np.ndarray, str, int
]  # lineno, listed path, src, dst, landmarks, template, quality


def align_job(job: AlignJob) -> tuple[int, str, str | None]:
    """:func:`align_file` for one job; returns ``(lineno, listed path, failure reason or None)``, never raises."""
    lineno, listed, src, dst, landmarks, template, quality = job
    try:
        align_file(src, dst, landmarks, template, quality)
    except (ValueError, OSError, cv2.error) as error:
        return lineno, listed, str(error)
    return lineno, listed, None
