"""Unpack an InsightFace / MXNet RecordIO pack into ``OUT/<label:07d>/<n:03d>.jpg`` (no mxnet needed).

Image bytes are written unchanged (the extension follows the bytes: .jpg, .png, ...). ``n`` counts from 001 within
each label, as in CASIA-WebFace. OUT must not exist or be empty.

Usage::

    python scripts/rec_to_folders.py data/faces_webface_112x112 data/webface_folders   # a pack directory
    python scripts/rec_to_folders.py data/casia/train data/casia_folders                # or a PREFIX.rec prefix
"""

from __future__ import annotations

import argparse
import sys

from facetrain.data.convert import recordio_to_folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefix", help="pack directory (train.rec/train.idx) or prefix of PREFIX.rec/PREFIX.idx")
    parser.add_argument("out", help="output directory (created; must be empty)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    n = recordio_to_folders(args.prefix, args.out, show_progress=not args.quiet)
    print(f"wrote {n} images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
