"""Write LFW pairs as an InsightFace verification ``.bin`` (the ``lfw.bin`` format of ``faces_webface_112x112``).

A ``.bin`` is a pickle of ``(bins, issame_list)``: two encoded images per pair, in ``pairs.txt`` order (so the 10
folds stay contiguous), and one bool per pair. The image files are stored byte for byte, not re-encoded, so the
pack is lossless. Point ``--root`` at an *aligned* LFW tree (e.g. 112x112 crops): the bytes go in as they are, and
models trained on aligned crops score far lower on raw 250x250 LFW images.

Only LFW-style protocols fit this format: a .bin holds pairs of single images. YouTube Faces pairs are pairs of
videos (frame sets), so there is no YTF .bin; evaluate YTF from its frame folders and ``splits.txt`` instead.

Usage::

    python scripts/pairs_to_bin.py --root data/lfw_112 --pairs-file data/lfw/pairs.txt --output data/lfw.bin
"""

from __future__ import annotations

import argparse
import sys

from facetrain.data.convert import lfw_pairs_to_bin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="LFW image root holding Name/Name_0001.jpg")
    parser.add_argument("--pairs-file", required=True, help="LFW View-2 pairs.txt")
    parser.add_argument("--output", required=True, help="output .bin path (written atomically)")
    parser.add_argument("--ext", default="jpg", help="image file extension in the tree (default: jpg)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    n = lfw_pairs_to_bin(args.root, args.pairs_file, args.output, ext=args.ext, show_progress=not args.quiet)
    print(f"wrote {n} pairs ({2 * n} images) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
