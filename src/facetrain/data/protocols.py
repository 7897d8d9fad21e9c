"""Readers and writers for the LFW ``pairs.txt`` and YouTube Faces ``splits.txt`` verification protocols.

Both protocols are lists of pairs with a same/not-same label, grouped into 10 folds in file order; they are parsed
into one :class:`PairList`. The readers are strict: a malformed file raises a single ``ValueError`` naming the file,
the 1-based line number and what was expected, because a silently mis-parsed protocol file yields plausible but
wrong accuracies (e.g. a header-less copy of ``pairs.txt`` read as if it had a header shifts every fold boundary).

They accept the copies that circulate, where that cannot change what is read: a UTF-8 byte-order mark, CRLF line
endings and, when the structure says what the header would have said, a missing header line (one warning names
what was inferred). The fold counts are checked either way, so a copy with a row missing is refused at that row.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.data.decode import IMAGE_EXTENSIONS
from facetrain.data.folds import fold_ids  # re-exported: the protocol files define the folds
from facetrain.utils.io import atomic_write

__all__ = [
    "PairList",
    "check_images_exist",
    "fold_ids",
    "list_frames",
    "read_lfw_pairs",
    "read_text_lines",
    "read_ytf_splits",
    "select_frames",
    "write_lfw_pairs",
    "write_ytf_splits",
]

log = logging.getLogger(__name__)

YTF_HEADER = "split number, pair number, first name, second name, is same"

# Accepted spellings of the YTF "same" column; the official file uses 1/0, some re-exports use booleans.
_YTF_SAME_VALUES = {"1": True, "0": False, "true": True, "false": False}

MatchedPair = tuple[str, int, int]
MismatchedPair = tuple[str, int, str, int]


@dataclass(frozen=True, eq=False)  # eq would compare numpy arrays element-wise and fail
class PairList:
    """Verification pairs with labels and fold assignment.

    Attributes:
        left: Path of the first item of each pair, relative to the dataset root (an image for LFW, a video
            directory ``Name/<video>`` for YTF).
        right: Path of the second item of each pair, relative to the same root.
        issame: Boolean array, True where both items show the same identity.
        folds: Integer array with the 0-based fold (LFW set / YTF split) of each pair.
    """

    left: list[str]
    right: list[str]
    issame: np.ndarray
    folds: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.left)
        if not (len(self.right) == len(self.issame) == len(self.folds) == n):
            raise ValueError(
                f"PairList fields have different lengths: left={n}, right={len(self.right)}, "
                f"issame={len(self.issame)}, folds={len(self.folds)}"
            )

    def __len__(self) -> int:
        return len(self.left)

    @property
    def n_folds(self) -> int:
        """Number of distinct folds."""
        return int(np.unique(self.folds).size)


def read_text_lines(path: str | os.PathLike[str], what: str = "protocol file") -> list[str]:
    """The lines of a UTF-8 text file as copies circulate: BOM-tolerant, any line ending, no trailing blank lines.

    A leading byte-order mark (which Windows editors add) is dropped: left in, it glues itself to the first field,
    so ``'\\ufeff1'`` is no longer a number and a data row passes for a header. LF, CRLF and CR all end a line.
    This is the one place protocol and landmark files are read as text.

    Args:
        path: The file.
        what: What the file is, for the not-found message.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not UTF-8 text; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        lineno = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{lineno}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    lines = text.splitlines()
    # A trailing newline (or several) is common and harmless; blank lines inside the file are left to the parsers.
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_lines(path: Path) -> list[str]:
    """The lines of a protocol file (:func:`read_text_lines`), refusing an empty one.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is empty or not UTF-8 text.
    """
    lines = read_text_lines(path)
    if not lines:
        raise ValueError(f"{path}: file is empty")
    return lines


def _image_number(path: Path, lineno: int, token: str) -> int:
    """Parses a 1-based LFW image number, raising a located ValueError."""
    try:
        number = int(token)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: image number must be an integer, got {token!r}") from None
    if number < 1:
        raise ValueError(f"{path}:{lineno}: image number must be >= 1 (LFW numbers images from 1), got {number}")
    return number


def _parse_lfw_header(path: Path, line: str) -> tuple[int, int]:
    """Parses the ``<n_folds>\\t<n_per_fold>`` header of ``pairs.txt``."""
    fields = line.split()
    hint = (
        " (the file seems to lack its header line, and its lines are not whole folds of n matched then n mismatched "
        "pairs, so the folds cannot be inferred)"
        if len(fields) in (3, 4)
        else ""
    )
    if len(fields) != 2:
        raise ValueError(
            f"{path}:1: expected header '<n_folds><TAB><pairs_per_fold>', got {len(fields)} fields{hint}: {line!r}"
        )
    try:
        n_folds, n_per_fold = int(fields[0]), int(fields[1])
    except ValueError:
        raise ValueError(f"{path}:1: header fields must be integers, got {line!r}") from None
    if n_folds < 1 or n_per_fold < 1:
        raise ValueError(f"{path}:1: header values must be positive, got {line!r}")
    return n_folds, n_per_fold


def _infer_lfw_layout(lines: Sequence[str]) -> tuple[int, int] | None:
    """``(n_folds, n)`` of a header-less ``pairs.txt``, or None when its lines do not say so unambiguously.

    The lines must be at least two whole folds of ``n`` matched (3-field) lines then ``n`` mismatched (4-field)
    lines, checked line by line; ``n`` is the length of the first run of matched lines. One fold alone is refused:
    without a repetition nothing confirms where a fold ends.
    """
    kinds = [len(line.split()) for line in lines]
    n = next((i for i, k in enumerate(kinds) if k != 3), len(kinds))
    if n == 0 or len(kinds) % (2 * n) or len(kinds) // (2 * n) < 2:
        return None
    if any(k != (3 if i % (2 * n) < n else 4) for i, k in enumerate(kinds)):
        return None
    return len(kinds) // (2 * n), n


def _parse_lfw_pair(path: Path, lineno: int, line: str, matched: bool, ext: str) -> tuple[str, str]:
    """Parses one matched (3-field) or mismatched (4-field) line into two image paths."""
    fields = line.split()
    expected, kind = (
        (3, "matched pair 'name<TAB>n1<TAB>n2'") if matched else (4, "mismatched pair 'name1<TAB>n1<TAB>name2<TAB>n2'")
    )
    if len(fields) != expected:
        other = {3: " (a matched line)", 4: " (a mismatched line)"}.get(len(fields), "")
        raise ValueError(f"{path}:{lineno}: expected a {kind}, got {len(fields)} fields{other}: {line!r}")
    if matched:
        name, n1, n2 = fields[0], _image_number(path, lineno, fields[1]), _image_number(path, lineno, fields[2])
        if n1 == n2:
            raise ValueError(f"{path}:{lineno}: matched pair uses the same image twice: {line!r}")
        name1, name2 = name, name
    else:
        name1, name2 = fields[0], fields[2]
        n1, n2 = _image_number(path, lineno, fields[1]), _image_number(path, lineno, fields[3])
        if name1 == name2:
            raise ValueError(f"{path}:{lineno}: mismatched pair names the same person twice: {line!r}")
    return f"{name1}/{name1}_{n1:04d}.{ext}", f"{name2}/{name2}_{n2:04d}.{ext}"


def read_lfw_pairs(pairs_file: str | os.PathLike[str], ext: str = "jpg") -> PairList:
    """Reads an LFW View-2 ``pairs.txt``.

    Layout: a header ``<n_folds>\\t<n>``, then for each fold ``n`` matched lines ``name\\tn1\\tn2`` followed by
    ``n`` mismatched lines ``name1\\tn1\\tname2\\tn2``. Folds follow file order (pair ``i`` is in fold
    ``i // (2 n)``), as the official protocol requires. A copy without the header line is read when its lines are
    at least two whole such folds (the official 6,000 lines: 10 x (300 + 300)), with a warning saying so;
    otherwise the missing header is an error. A byte-order mark and CRLF endings are accepted.

    Args:
        pairs_file: Path of ``pairs.txt``.
        ext: Image file extension used to build the image paths ``Name/Name_0001.<ext>``.

    Returns:
        The pairs, with paths relative to the LFW image root.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file does not follow the layout; the message names the file and line.
    """
    path = Path(pairs_file)
    lines = _read_lines(path)
    layout = _infer_lfw_layout(lines) if len(lines[0].split()) in (3, 4) else None
    if layout is None:
        n_folds, n = _parse_lfw_header(path, lines[0])
        first = 1  # data lines start after the header
    else:
        n_folds, n = layout
        first = 0
        log.warning(
            "%s has no header line; read as %d folds x (%d matched + %d mismatched) pairs, inferred from its %d lines "
            "and checked line by line",
            path, n_folds, n, n, len(lines),
        )  # fmt: skip
    expected_lines = first + n_folds * 2 * n
    left: list[str] = []
    right: list[str] = []
    for i, line in enumerate(lines[first:expected_lines]):
        lineno = i + first + 1
        a, b = _parse_lfw_pair(path, lineno, line, matched=(i % (2 * n)) < n, ext=ext)
        left.append(a)
        right.append(b)
    if len(lines) != expected_lines:
        where = len(lines) + 1 if len(lines) < expected_lines else expected_lines + 1
        raise ValueError(
            f"{path}:{where}: wrong line count: header promises {n_folds} folds x ({n} matched + {n} mismatched) "
            f"= {expected_lines} lines including the header, file has {len(lines)}"
        )
    index = np.arange(len(left))
    return PairList(left, right, issame=(index % (2 * n)) < n, folds=index // (2 * n))


def check_images_exist(pairs: PairList, root: str | os.PathLike[str]) -> None:
    """Checks that every item referenced by ``pairs`` exists under ``root``.

    Meant to run before any feature extraction, so a wrong root fails in a second instead of after an epoch.

    Args:
        pairs: Pairs whose ``left``/``right`` paths are relative to ``root``.
        root: Dataset root directory.

    Raises:
        FileNotFoundError: Naming the first missing item, the index of the first pair using it and the total
            number of missing items.
    """
    root = Path(root)
    seen: dict[str, bool] = {}
    first: tuple[str, int] | None = None
    for index, (a, b) in enumerate(zip(pairs.left, pairs.right)):
        for rel in (a, b):
            if rel not in seen:
                seen[rel] = (root / rel).exists()
                if not seen[rel] and first is None:
                    first = (rel, index)
    if first is not None:
        missing = sum(1 for ok in seen.values() if not ok)
        raise FileNotFoundError(
            f"{missing} of {len(seen)} items referenced by the pairs are missing under {root}; "
            f"first missing: {root / first[0]} (pair {first[1]})"
        )


def _parse_ytf_row(path: Path, lineno: int, line: str) -> tuple[int, int, str, str, bool]:
    """Parses one ``split, pair, Name/video, Name/video, same`` row of ``splits.txt``."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 5:
        raise ValueError(
            f"{path}:{lineno}: expected 5 comma-separated fields 'split, pair, Name/video, Name/video, same', "
            f"got {len(fields)}: {line!r}"
        )
    try:
        split, pair = int(fields[0]), int(fields[1])
    except ValueError:
        raise ValueError(f"{path}:{lineno}: split and pair numbers must be integers, got {line!r}") from None
    for video in fields[2:4]:
        parts = video.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected a video 'Name/<video number>', got {video!r}")
    same = _YTF_SAME_VALUES.get(fields[4].lower())
    if same is None:
        raise ValueError(f"{path}:{lineno}: 'same' must be 1 or 0 (or True/False), got {fields[4]!r}")
    return split, pair, fields[2], fields[3], same


def _looks_like_ytf_row(line: str) -> bool:
    """True if a first line is meant as a data row (it starts with a split number), i.e. a header-less copy.

    A header never starts with a number, so this is unambiguous; such a line is then parsed as a row, and a
    malformed one is reported at line 1 rather than silently dropped as a header.
    """
    return line.split(",")[0].strip().isdigit()


@dataclass
class _SplitCount:
    """Running counts of one split of ``splits.txt``, for the per-split check."""

    split: int
    same: int = 0
    different: int = 0
    last_line: int = 0
    gap: tuple[int, int, int] | None = None  # (line, previous pair, pair) of the first jump in pair numbers

    @property
    def size(self) -> int:
        return self.same + self.different


def _check_ytf_counts(path: Path, counts: Sequence[_SplitCount]) -> None:
    """Checks that every split has the same number of pairs, as many same as different (officially 250 + 250).

    The reference size is the most common one, so the message names the split that deviates (the first one in
    file order), at the line where its pair numbers jump if they do (a row deleted there), else at its last line.

    Raises:
        ValueError: Naming the file, the line and the counts found.
    """
    sizes = Counter(c.size for c in counts)
    reference = max(sizes, key=lambda size: (sizes[size], size))
    example = next(c.split for c in counts if c.size == reference)
    for c in counts:
        if c.size == reference and c.same == c.different:
            continue
        if c.gap is None:
            line, what = c.last_line, f"split {c.split} ends here with"
        else:
            line, what = (
                c.gap[0],
                f"pair numbers jump from {c.gap[1]} to {c.gap[2]} here (a row missing?); split {c.split} has",
            )
        raise ValueError(
            f"{path}:{line}: {what} {c.size} pairs ({c.same} same, {c.different} different), but every split must have "
            f"the same number of pairs, half of them same (split {example} has {reference})"
        )


def read_ytf_splits(splits_file: str | os.PathLike[str], n_splits: int | None = None) -> PairList:
    """Reads a YouTube Faces ``splits.txt``.

    Layout: one header line, then rows ``split, pair, Name/video, Name/video, same`` separated by a comma and
    optional spaces. Splits must be numbered 1..K in file order; pair numbers must increase within a split; every
    split must have the same number of pairs, as many same as different (officially 10 x 500 = 250 + 250).
    A copy without the header line (its first line starts with a split number) is read with a warning; a
    byte-order mark and CRLF endings are accepted.

    Args:
        splits_file: Path of ``splits.txt``.
        n_splits: Number of splits the file must have (10 for YTF); None accepts any.

    Returns:
        The video pairs (paths ``Name/<video>`` relative to ``aligned_images_DB``), folds = split - 1.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file does not follow the layout; the message names the file and the first line that
            deviates.
    """
    path = Path(splits_file)
    lines = _read_lines(path)
    first = 0 if _looks_like_ytf_row(lines[0]) else 1  # index of the first data row
    if first == len(lines):
        raise ValueError(f"{path}:2: expected data rows after the header, file ends at line 1")
    left, right, same, folds = [], [], [], []
    counts: list[_SplitCount] = []
    prev_split, prev_pair = 0, 0
    for lineno, line in enumerate(lines[first:], start=first + 1):
        split, pair, a, b, is_same = _parse_ytf_row(path, lineno, line)
        if split == prev_split + 1:
            prev_pair = 0
            counts.append(_SplitCount(split))
        elif split != prev_split:
            expected = "1" if prev_split == 0 else f"{prev_split} or {prev_split + 1}"
            raise ValueError(
                f"{path}:{lineno}: splits must be numbered 1..K in order; expected split {expected}, got {split}"
            )
        if pair <= prev_pair:
            raise ValueError(
                f"{path}:{lineno}: pair numbers must increase within split {split}, got {pair} after {prev_pair}"
            )
        count = counts[-1]
        if pair != prev_pair + 1 and count.gap is None:
            count.gap = (lineno, prev_pair, pair)
        count.same += is_same
        count.different += not is_same
        count.last_line = lineno
        prev_split, prev_pair = split, pair
        left.append(a)
        right.append(b)
        same.append(is_same)
        folds.append(split - 1)
    if n_splits is not None and prev_split != n_splits:
        raise ValueError(f"{path}:{len(lines)}: expected {n_splits} splits, the file ends after split {prev_split}")
    _check_ytf_counts(path, counts)
    if first == 0:
        log.warning(
            "%s has no header line (line 1 is a data row); read all %d lines as pairs: %d splits of %d pairs",
            path, len(lines), len(counts), counts[0].size,
        )  # fmt: skip
    return PairList(left, right, issame=np.array(same, dtype=bool), folds=np.array(folds, dtype=np.int64))


_FRAME_NUMBER = re.compile(r"\.(\d+)\.[^.]+$")


def _frame_key(name: str) -> tuple[int, str]:
    match = _FRAME_NUMBER.search(name)
    return (int(match.group(1)) if match else -1, name)


def select_frames(count: int, frames_per_video: int | None = None, first_k: int | None = None) -> np.ndarray:
    """Indices of the frames of a ``count``-frame video that a YTF evaluation uses, in frame order.

    Args:
        count: Frames in the video.
        frames_per_video: Keep at most this many evenly spaced frames; None keeps all.
        first_k: Keep only the first k frames (FaceNet's YTF protocol); applied instead of ``frames_per_video``.
    """
    if first_k is not None:
        return np.arange(min(count, first_k))
    if frames_per_video is not None and count > frames_per_video:
        return np.linspace(0, count - 1, frames_per_video).round().astype(np.int64)
    return np.arange(count)


def list_frames(
    video_dir: str | os.PathLike[str], frames_per_video: int | None = None, first_k: int | None = None
) -> list[str]:
    """Paths of the frames of one YTF video folder in frame-number order (``aligned_detect_<video>.<n>.jpg``),
    selected by :func:`select_frames`.

    Raises:
        FileNotFoundError: The folder does not exist or holds no frame images.
    """
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder {str(video_dir)!r} named in the splits file does not exist")
    frames = sorted((f for f in os.listdir(video_dir) if f.lower().endswith(IMAGE_EXTENSIONS)), key=_frame_key)
    if not frames:
        raise FileNotFoundError(f"video folder {str(video_dir)!r} holds no frame images")
    return [os.path.join(video_dir, frames[i]) for i in select_frames(len(frames), frames_per_video, first_k)]


def _write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> None:
    """Write ``lines`` as UTF-8 text with ``\\n`` endings, atomically (readers never see a partial protocol file)."""
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{line}\n" for line in lines))


def write_lfw_pairs(
    path: str | os.PathLike[str],
    folds: Sequence[tuple[Sequence[MatchedPair], Sequence[MismatchedPair]]],
) -> None:
    """Writes an LFW View-2 ``pairs.txt`` (tab separators, ``\\n`` line endings), atomically.

    Args:
        path: Destination file.
        folds: Per fold, the matched pairs ``(name, n1, n2)`` and the mismatched pairs
            ``(name1, n1, name2, n2)``; every fold must have the same number ``n`` of each.

    Raises:
        ValueError: If there are no folds or the folds do not all have ``n`` matched and ``n`` mismatched pairs.
    """
    if not folds:
        raise ValueError("write_lfw_pairs: at least one fold is required")
    n = len(folds[0][0])
    out = [f"{len(folds)}\t{n}"]
    for k, (matched, mismatched) in enumerate(folds):
        if len(matched) != n or len(mismatched) != n or n == 0:
            raise ValueError(
                f"write_lfw_pairs: fold {k} has {len(matched)} matched and {len(mismatched)} mismatched pairs; "
                f"pairs.txt needs the same positive number ({n}) of each in every fold"
            )
        out.extend(f"{name}\t{n1}\t{n2}" for name, n1, n2 in matched)
        out.extend(f"{a}\t{n1}\t{b}\t{n2}" for a, n1, b, n2 in mismatched)
    _write_lines(path, out)


def write_ytf_splits(path: str | os.PathLike[str], rows: Iterable[tuple[int, int, str, str, bool | int]]) -> None:
    """Writes a YouTube Faces ``splits.txt`` (header line, ``", "`` separators), atomically.

    Args:
        path: Destination file.
        rows: ``(split, pair, "Name/video", "Name/video", same)`` with 1-based split and pair numbers.
    """
    out = [YTF_HEADER]
    out.extend(f"{split}, {pair}, {a}, {b}, {int(bool(same))}" for split, pair, a, b, same in rows)
    _write_lines(path, out)
