"""Readers for IJB-B / IJB-C in InsightFace's packaging, and the 5-point alignment of their loose crops.

Layout (``<prefix>`` is ``ijbc`` or ``ijbb``), as InsightFace's ``recognition/_evaluation_/ijb/ijb_11.py`` and
``ijb_1n.py`` and ``recognition/arcface_torch/eval_ijbc.py`` read it (users-and-scale.md §3)::

    <root>/loose_crop/<n>.jpg                          unaligned face crops
    <root>/meta/<prefix>_face_tid_mid.txt              "<image> <template> <media>" per face
    <root>/meta/<prefix>_name_5pts_score.txt           "<image> x1 y1 ... x5 y5 <faceness>" per face, same order
    <root>/meta/<prefix>_template_pair_label.txt       "<template1> <template2> <label>" per 1:1 pair
    <root>/meta/<prefix>_1N_gallery_<G1|G2>.csv        1:N galleries (IJB-B: _S1, _S2)
    <root>/meta/<prefix>_1N_probe_mixed.csv            1:N probe templates

Files are space separated; the landmarks are (x, y) interleaved (``reshape((5, 2))``), in the point order of
:mod:`facetrain.data.align`. The 1:N CSVs are the IJB protocol files: a header whose first two columns are
``TEMPLATE_ID,SUBJECT_ID`` (further columns ``FILENAME,...`` as distributed by NIST), then one row per face image;
``ijb_1n.py``'s ``read_template_subject_id_list`` skips the header and reads columns 0 and 1, and the gallery names
are ``ijbc_1N_gallery_G1.csv`` / ``_G2.csv`` for IJB-C and ``ijbb_1N_gallery_S1.csv`` / ``_S2.csv`` for IJB-B.

Everything is checked before any image is embedded: a problem stops the read with one message naming the file
and line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facetrain.data.align import align_face
from facetrain.data.decode import read_rgb
from facetrain.data.protocols import read_text_lines

__all__ = ["IjbSet", "aligned_face", "aligned_faces", "read_ijb", "read_pair_file", "read_subject_csv"]

# A space-separated integer table is parsed this many bytes at a time (bounds the working memory for IJB-C's
# 15.7 M-line pair file).
_CHUNK_BYTES = 1 << 24
_WHITESPACE = np.array([9, 10, 13, 32], dtype=np.uint8)


@dataclass(frozen=True)
class IjbSet:
    """One IJB set as plain arrays, rows in the order of the media and landmark files.

    Attributes:
        root: The set's folder.
        prefix: File prefix (``ijbc`` / ``ijbb``).
        images: Image file names as listed (``1.jpg``), relative to ``root / "loose_crop"``.
        landmarks: ``(N, 5, 2)`` float32 (x, y) landmarks in the loose crop.
        faceness: ``(N,)`` float32 detector scores.
        templates: ``(N,)`` template id of each face.
        medias: ``(N,)`` media id of each face.
        pair_t1: First template of each 1:1 pair.
        pair_t2: Second template of each 1:1 pair.
        pair_labels: ``(P,)`` int8, 1 for genuine pairs.
        galleries: 1:N gallery name → (template ids, subject ids); empty without the 1:N lists.
        probe: 1:N probe (template ids, subject ids), or None.
        image_dir: Folder of the loose crops.
    """

    root: Path
    prefix: str
    images: list[str]
    landmarks: np.ndarray
    faceness: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_labels: np.ndarray
    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    probe: tuple[np.ndarray, np.ndarray] | None = None
    image_dir: Path | None = None

    def path(self, index: int) -> Path:
        """Path of face ``index``'s loose crop."""
        return (self.image_dir or self.root / "loose_crop") / self.images[index]


def _integer(path: Path, lineno: int, token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be an integer, got {token!r}") from None


def _read_media_file(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    names, templates, medias = [], [], []
    for lineno, line in enumerate(read_text_lines(path, "IJB media file"), start=1):
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{path}:{lineno}: expected '<image> <template> <media>', got {line!r}")
        names.append(fields[0])
        templates.append(_integer(path, lineno, fields[1], "the template id"))
        medias.append(_integer(path, lineno, fields[2], "the media id"))
    if not names:
        raise ValueError(f"{path}: no faces listed")
    return names, np.asarray(templates, dtype=np.int64), np.asarray(medias, dtype=np.int64)


def _read_landmark_file(path: Path, names: Sequence[str], media_path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = read_text_lines(path, "IJB landmark file")
    if len(lines) != len(names):
        raise ValueError(f"{path}: {len(lines)} lines, but {media_path.name} lists {len(names)} faces")
    landmarks = np.empty((len(lines), 10), dtype=np.float32)
    faceness = np.empty(len(lines), dtype=np.float32)
    for i, line in enumerate(lines):
        lineno = i + 1
        fields = line.split()
        if len(fields) != 12:
            raise ValueError(
                f"{path}:{lineno}: expected an image name, 10 landmark values and a faceness score "
                f"({len(fields) - 2 if len(fields) >= 2 else 0} landmark values found): {line!r}"
            )
        if fields[0] != names[i]:
            raise ValueError(
                f"{path}:{lineno}: image {fields[0]!r}, but line {lineno} of {media_path.name} is {names[i]!r}"
            )
        try:
            landmarks[i] = [float(v) for v in fields[1:11]]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: a landmark value is not a number: {line!r}") from None
        try:
            faceness[i] = float(fields[11])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: the faceness score {fields[11]!r} is not a number") from None
        if not (np.all(np.isfinite(landmarks[i])) and np.isfinite(faceness[i])):
            raise ValueError(f"{path}:{lineno}: landmarks and faceness score must be finite: {line!r}")
    return landmarks.reshape(-1, 5, 2), faceness


def _slow_int_lines(path: Path, text: str, first_line: int, columns: int, what: str) -> None:
    """Find and report the first malformed line of a chunk the fast parser refused (always raises)."""
    for offset, line in enumerate(text.split("\n")):
        lineno = first_line + offset
        fields = line.split()
        if len(fields) != columns:
            raise ValueError(f"{path}:{lineno}: expected {columns} fields ({what}), got {len(fields)}: {line!r}")
        for token in fields:
            _integer(path, lineno, token, "every field")
    raise ValueError(f"{path}: malformed content near line {first_line}")  # pragma: no cover (defensive)


def read_pair_file(path: str | os.PathLike[str], columns: int = 3, what: str = "t1 t2 label") -> np.ndarray:
    """A whitespace-separated integer table (e.g. ``<prefix>_template_pair_label.txt``) as an ``(n, columns)`` array.

    Parsed with NumPy in 16 MiB chunks (IJB-C has 15.7 M lines): a per-line Python split would take tens of
    seconds. A malformed line is reported with its number.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line has the wrong number of fields or a field is not an integer (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB pair file not found: {path}")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    parts: list[np.ndarray] = []
    start, line_base = 0, 1
    while start < len(data):
        stop = data.rfind(b"\n", start, start + _CHUNK_BYTES) + 1 if start + _CHUNK_BYTES < len(data) else len(data)
        if stop <= start:  # a single line longer than a chunk: malformed anyway
            stop = len(data)
        chunk = data[start:stop]
        n_lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        text = chunk.decode("ascii", errors="replace")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
        if values is None or not _fields_per_line_ok(chunk, columns, stop == len(data)):
            _slow_int_lines(path, text.rstrip("\r\n") if stop == len(data) else text[:-1], line_base, columns, what)
        parts.append(values.reshape(-1, columns))
        start, line_base = stop, line_base + n_lines
    if not parts:
        raise ValueError(f"{path}: no lines")
    return np.concatenate(parts)


def _fields_per_line_ok(chunk: bytes, columns: int, last: bool) -> bool:
    """True when every line of ``chunk`` holds exactly ``columns`` whitespace-separated tokens (trailing blank
    lines of the file's last chunk excepted)."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    space = np.isin(buf, _WHITESPACE)
    token_start = np.flatnonzero(~space & np.r_[True, space[:-1]])
    newlines = np.flatnonzero(buf == 10)
    line_of_token = np.searchsorted(newlines, token_start)
    counts = np.bincount(line_of_token, minlength=newlines.size + 1)
    if last:  # the file's trailing blank lines (and the empty remainder after its final newline) are fine
        nonblank = np.flatnonzero(counts)
        counts = counts[: nonblank[-1] + 1] if nonblank.size else counts[:0]
    elif chunk.endswith(b"\n"):
        counts = counts[:-1]
    return bool(counts.size) and bool(np.all(counts == columns))


def read_subject_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A 1:N gallery or probe CSV → (template ids, subject id of each), one entry per template in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The header does not start ``TEMPLATE_ID,SUBJECT_ID``, a row is malformed, or a template is
            listed with two subjects (file and line named).
    """
    path = Path(path)
    lines = read_text_lines(path, "IJB 1:N list")
    header = [f.strip() for f in lines[0].split(",")] if lines else []
    if header[:2] != ["TEMPLATE_ID", "SUBJECT_ID"]:
        raise ValueError(f"{path}:1: expected a header starting 'TEMPLATE_ID,SUBJECT_ID', got {lines[:1]!r}")
    subject_of: dict[int, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'TEMPLATE_ID,SUBJECT_ID,...', got {line!r}")
        template = _integer(path, lineno, fields[0].strip(), "TEMPLATE_ID")
        subject = _integer(path, lineno, fields[1].strip(), "SUBJECT_ID")
        if subject_of.setdefault(template, subject) != subject:
            raise ValueError(
                f"{path}:{lineno}: template {template} listed with subject {subject}, "
                f"earlier with {subject_of[template]}"
            )
    if not subject_of:
        raise ValueError(f"{path}: no templates listed")
    return np.fromiter(subject_of.keys(), np.int64), np.fromiter(subject_of.values(), np.int64)


def _check_templates_known(path: Path, listed: np.ndarray, known: np.ndarray, lines: np.ndarray, media: Path) -> None:
    """Raise naming the line (``lines[i]`` for entry i) of the first template of ``listed`` not in ``known``."""
    missing = ~np.isin(listed, known)
    if np.any(missing):
        i = int(np.argmax(missing))
        raise ValueError(
            f"{path}:{int(lines[i])}: template {int(listed[i])} is not in {media.name} "
            f"({int(missing.sum())} unknown entries in all)"
        )


def _csv_template_lines(path: Path, templates: np.ndarray) -> np.ndarray:
    """The line of each template's first row in a 1:N CSV (for error messages)."""
    first_line: dict[int, int] = {}
    for lineno, line in enumerate(read_text_lines(path)[1:], start=2):
        first_line.setdefault(int(line.split(",")[0]), lineno)
    return np.array([first_line[int(t)] for t in templates])


def read_ijb(
    root: str | os.PathLike[str],
    prefix: str = "ijbc",
    galleries: Sequence[str] = ("G1", "G2"),
    image_dir: str = "loose_crop",
    meta_dir: str = "meta",
) -> IjbSet:
    """Read and check an IJB set in InsightFace's layout (see the module docstring).

    Args:
        root: The set's folder (holding ``loose_crop/`` and ``meta/``).
        prefix: File prefix: ``ijbc`` or ``ijbb``.
        galleries: 1:N gallery names: ``G1, G2`` for IJB-C, ``S1, S2`` for IJB-B. The 1:N lists are read when
            ``<prefix>_1N_probe_mixed.csv`` exists; then every gallery file must exist too.
        image_dir: Folder of the loose crops under ``root``.
        meta_dir: Folder of the protocol files under ``root``.

    Raises:
        FileNotFoundError: A required file or folder is missing.
        ValueError: Malformed or inconsistent lists, or a listed image absent from disk (file and line named).
    """
    root = Path(root)
    meta, images_at = root / meta_dir, root / image_dir
    media_path = meta / f"{prefix}_face_tid_mid.txt"
    names, templates, medias = _read_media_file(media_path)
    landmarks, faceness = _read_landmark_file(meta / f"{prefix}_name_5pts_score.txt", names, media_path)
    if not images_at.is_dir():
        raise FileNotFoundError(f"IJB image folder not found: {images_at}")
    on_disk = set(os.listdir(images_at))
    for lineno, name in enumerate(names, start=1):
        if name not in on_disk:
            raise ValueError(f"{media_path}:{lineno}: image {name!r} is not in {images_at}")
    known = np.unique(templates)
    pair_path = meta / f"{prefix}_template_pair_label.txt"
    pairs = read_pair_file(pair_path)
    pair_lines = np.arange(1, pairs.shape[0] + 1)
    _check_templates_known(
        pair_path, np.where(np.isin(pairs[:, 0], known), pairs[:, 1], pairs[:, 0]), known, pair_lines, media_path
    )
    labels = pairs[:, 2]
    bad = (labels != 0) & (labels != 1)
    if np.any(bad):
        raise ValueError(f"{pair_path}:{int(np.argmax(bad)) + 1}: the label must be 0 or 1, got {labels[bad][0]}")
    gallery_lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    probe = None
    probe_path = meta / f"{prefix}_1N_probe_mixed.csv"
    if probe_path.is_file():
        for name, path in [(g, meta / f"{prefix}_1N_gallery_{g}.csv") for g in galleries] + [("", probe_path)]:
            listed = read_subject_csv(path)
            if not np.all(np.isin(listed[0], known)):
                _check_templates_known(path, listed[0], known, _csv_template_lines(path, listed[0]), media_path)
            if name:
                gallery_lists[name] = listed
            else:
                probe = listed
    return IjbSet(
        root=root,
        prefix=prefix,
        images=names,
        landmarks=landmarks,
        faceness=faceness,
        templates=templates,
        medias=medias,
        pair_t1=pairs[:, 0].copy(),
        pair_t2=pairs[:, 1].copy(),
        pair_labels=labels.astype(np.int8),
        galleries=gallery_lists,
        probe=probe,
        image_dir=images_at,
    )


def aligned_face(ijb: IjbSet, index: int, template: str = "112x112") -> np.ndarray:
    """Face ``index`` aligned from its five landmarks: an ``H×W×3`` uint8 RGB crop (112×112 by default).

    The decode function an embedding loader needs (``functools.partial(aligned_face, ijb)``); the alignment is
    :func:`facetrain.data.align.align_face`, InsightFace's ``norm_crop`` to the ArcFace template.
    """
    return align_face(read_rgb(ijb.path(index)), ijb.landmarks[index], template)


def aligned_faces(ijb: IjbSet, indices: Iterable[int], template: str = "112x112") -> Iterator[np.ndarray]:
    """:func:`aligned_face` for each index, in order (the caller batches them)."""
    for index in indices:
        yield aligned_face(ijb, int(index), template)
