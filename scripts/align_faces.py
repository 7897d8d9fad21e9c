"""Align face images with 5-point landmarks onto the 112×112 (ArcFace) or 112×96 (SphereFace) template.

Usage::

    python scripts/align_faces.py --landmarks casia_landmarks.csv --root /data/CASIA-WebFace \\
        --out /data/CASIA-WebFace-112x112 --size 112x112 [--workers 8]
    python scripts/align_faces.py --landmarks train.lst --root /data/CASIA-WebFace \\
        --strip-prefix /raid5data/dplearn/CASIA-WebFace --out /data/casia-112x96 --size 112x96

Landmark files (see ``facetrain.data.align``): CSV ``path,x1,y1,...,x5,y5`` (a header line is optional and
recognised by its column names) or InsightFace ``.lst`` (``aligned, path, label, bbox x4, x1..x5, y1..y5``;
tab-separated). The five points are, in this order: left eye, right eye, nose tip, left mouth corner, right mouth
corner, where "left" is the image's left (the person's right eye), as InsightFace's detectors output them. They are
pixel positions in the image as displayed, i.e. after its EXIF orientation is applied (OpenCV and the usual
detectors read images that way; a detector that ignores EXIF gives points in another frame for rotated phone
photos). Listed paths are relative to ``--root`` (absolute paths must lie under ``--root``, or start with
``--strip-prefix``); each aligned image is written to the same relative path under ``--out``, so identity folders
are kept.

Every entry that cannot be aligned (wrong column count, empty, non-numeric or degenerate landmarks, missing,
unreadable or damaged image file, duplicate path) is listed with its line number in ``<out>/failed.txt`` and
counted in the summary; nothing is dropped silently. An image whose data is damaged in the middle (the decoder
warns, e.g. "Corrupt JPEG data") is refused rather than aligned into a half-grey crop. The exit code is 1 if
anything failed, unless ``--allow-failures``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import cv2

from facetrain.data.align import TEMPLATES, AlignJob, LandmarkRow, RowError, align_job, parse_landmarks


def _relative(listed: str, root: Path, strip_prefix: str | None) -> str:
    """The path of an entry relative to ``--root`` (raises ValueError with the reason)."""
    path = listed.replace("\\", "/")
    if strip_prefix:
        prefix = strip_prefix.replace("\\", "/").rstrip("/") + "/"
        if path.startswith(prefix):
            path = path[len(prefix) :]
    if PurePosixPath(path).is_absolute():
        try:
            path = Path(path).relative_to(root.resolve()).as_posix()
        except ValueError:
            raise ValueError("absolute path outside --root (use --strip-prefix to drop its prefix)") from None
    if ".." in PurePosixPath(path).parts or not path:
        raise ValueError("path escapes --root ('..')")
    return path


def _progress(items: Iterator, total: int, quiet: bool) -> Iterator:
    if quiet:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: fall back to a counter on stderr
        for done, item in enumerate(items, start=1):
            if done % 1000 == 0 or done == total:
                print(f"\raligned {done}/{total}", end="", file=sys.stderr, flush=True)
            yield item
        print(file=sys.stderr)
        return
    yield from tqdm(items, total=total, unit="img", desc="align")


def _map(jobs: Sequence[AlignJob], workers: int) -> Iterable[tuple[int, str, str | None]]:
    if workers <= 1:
        return map(align_job, jobs)
    # spawn, not fork: a forked child inherits OpenCV's/torch's thread-pool state without the threads and can hang.
    # align_job lives in facetrain.data.align so the spawned workers can import it.
    pool = mp.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,))

    def results() -> Iterator[tuple[int, str, str | None]]:
        with pool:
            yield from pool.imap_unordered(align_job, jobs, chunksize=64)

    return results()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Landmark order: left eye, right eye, nose, left mouth corner, right mouth corner, where left is the "
        "image's left (the person's right eye); (x, y) in pixels of the image as displayed, after its EXIF "
        "orientation is applied.",
    )
    parser.add_argument(
        "--landmarks",
        required=True,
        type=Path,
        help="CSV (path,x1,y1,...,x5,y5; header optional, recognised by its names) or InsightFace .lst",
    )
    parser.add_argument("--root", required=True, type=Path, help="directory the listed image paths are relative to")
    parser.add_argument("--out", required=True, type=Path, help="output directory (same relative paths)")
    parser.add_argument("--size", default="112x112", choices=sorted(TEMPLATES), help="template, height x width")
    parser.add_argument("--format", default="auto", choices=["auto", "csv", "lst"], help="auto: .lst means lst")
    parser.add_argument("--strip-prefix", default=None, help="prefix to drop from listed paths (e.g. .lst paths)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the written crops")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--allow-failures", action="store_true", help="exit 0 even if some entries failed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.landmarks.is_file():
        parser.error(f"--landmarks {args.landmarks}: no such file")
    if not args.root.is_dir():
        parser.error(f"--root {args.root}: no such directory")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {args.quality}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    failures: list[tuple[int, str, str]] = []
    jobs: list[AlignJob] = []
    for item in parse_landmarks(args.landmarks, args.format):
        if isinstance(item, RowError):
            failures.append((item.lineno, item.path, item.reason))
            continue
        assert isinstance(item, LandmarkRow)
        try:
            rel = _relative(item.path, args.root, args.strip_prefix)
        except ValueError as error:
            failures.append((item.lineno, item.path, str(error)))
            continue
        jobs.append(
            (item.lineno, item.path, str(args.root / rel), str(args.out / rel), item.landmarks, args.size, args.quality)
        )
    args.out.mkdir(parents=True, exist_ok=True)
    aligned = 0
    for lineno, listed, reason in _progress(iter(_map(jobs, args.workers)), len(jobs), args.quiet):
        if reason is None:
            aligned += 1
        else:
            failures.append((lineno, listed, reason))
    failures.sort()
    failed_file = args.out / "failed.txt"
    with open(failed_file, "w") as f:
        f.write(f"# {len(failures)} entries of {args.landmarks} not aligned: line<TAB>path<TAB>reason\n")
        f.writelines(f"{lineno}\t{path}\t{reason}\n" for lineno, path, reason in failures)
    total = aligned + len(failures)
    print(
        f"aligned {aligned} of {total} entries to {args.out} ({args.size}); "
        f"{len(failures)} failed, listed in {failed_file}"
    )
    for lineno, path, reason in failures[:10]:
        print(f"  {args.landmarks}:{lineno}: {path}: {reason}")
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more")
    return 1 if failures and not args.allow_failures else 0


if __name__ == "__main__":
    sys.exit(main())
