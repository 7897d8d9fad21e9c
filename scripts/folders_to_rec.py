"""Pack an identity-folder tree (``ROOT/<identity>/<image>``) into an InsightFace RecordIO pack.

Identities are the sorted folder names and their positions are the labels (the order ``LabelledImages`` uses).
Image files are copied byte for byte, so ``rec_to_folders.py`` gives them back unchanged.

Usage::

    python scripts/folders_to_rec.py data/CASIA-WebFace data/casia/train     # -> train.rec, train.idx, property
    python scripts/folders_to_rec.py ROOT PREFIX --no-header                 # im2rec-style pack, no header record
"""

from __future__ import annotations

import argparse
import sys

from facetrain.data.convert import folders_to_recordio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="tree root holding one folder of images per identity")
    parser.add_argument(
        "prefix",
        help="output prefix: writes PREFIX.rec, PREFIX.idx and 'property' next to them "
        "(an existing directory means DIR/train.*)",
    )
    parser.add_argument(
        "--no-header", action="store_true", help="omit InsightFace's header and identity records (keys then start at 0)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="size written to 'property' (default: that of the first image)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    info = folders_to_recordio(
        args.root,
        args.prefix,
        header_record=not args.no_header,
        image_size=tuple(args.image_size) if args.image_size else None,
        show_progress=not args.quiet,
    )
    print(f"wrote {info.num_images} images of {info.num_classes} classes to {info.rec_path} and {info.idx_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
