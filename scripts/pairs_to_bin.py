"""Write verification pairs as an InsightFace-style ``.bin``: LFW pairs (``lfw.bin``) or YouTube Faces video pairs.

LFW (``--pairs-file``): a pickle of ``(bins, issame_list)``, two encoded images per pair in ``pairs.txt`` order (so
the 10 folds stay contiguous) and one bool per pair, the ``lfw.bin`` format of ``faces_webface_112x112``.

YouTube Faces (``--splits-file``): the same layout with each of the two entries of a pair a *list* of encoded frames
(one video, in frame order), pairs in ``splits.txt`` order. InsightFace has no YTF pack; this is facetrain's
extension, read by ``eval=[ytf_bin]`` with the same restricted unpickler. A video in several pairs is stored once.
All frames are stored unless ``--frames-per-video`` picks evenly spaced ones (the real YTF is several GB in full).

The image files are stored byte for byte, not re-encoded, so the pack is lossless. Point ``--root`` at an
*aligned* tree (e.g. 112x112 crops): the bytes go in as they are, and models trained on aligned crops score far
lower on raw images.

Usage::

    python scripts/pairs_to_bin.py --root data/lfw_112 --pairs-file data/lfw/pairs.txt --output data/lfw.bin
    python scripts/pairs_to_bin.py --root data/ytf/aligned_images_DB --splits-file data/ytf/splits.txt \\
        --output data/ytf.bin [--frames-per-video 100]
"""

from __future__ import annotations

import argparse
import sys

from facetrain.data.convert import lfw_pairs_to_bin, ytf_splits_to_bin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="LFW image root (Name/Name_0001.jpg) or YTF aligned_images_DB")
    protocol = parser.add_mutually_exclusive_group(required=True)
    protocol.add_argument("--pairs-file", help="LFW View-2 pairs.txt")
    protocol.add_argument("--splits-file", help="YouTube Faces splits.txt (writes a video pack)")
    parser.add_argument("--output", required=True, help="output .bin path (written atomically)")
    parser.add_argument("--ext", default="jpg", help="LFW: image file extension in the tree (default: jpg)")
    parser.add_argument("--n-splits", type=int, default=10, help="YTF: splits the file must have (default: 10)")
    parser.add_argument("--frames-per-video", type=int, default=None, help="YTF: evenly spaced frames kept per video")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.pairs_file is not None:
        n = lfw_pairs_to_bin(args.root, args.pairs_file, args.output, ext=args.ext, show_progress=not args.quiet)
        print(f"wrote {n} pairs ({2 * n} images) to {args.output}")
        return 0
    n = ytf_splits_to_bin(
        args.root, args.splits_file, args.output, n_splits=args.n_splits, frames_per_video=args.frames_per_video,
        show_progress=not args.quiet,
    )  # fmt: skip
    print(f"wrote {n} video pairs to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
