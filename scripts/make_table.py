"""Make a results table from a Hydra multirun: Markdown, CSV, LaTeX and a PNG figure.

    python scripts/make_table.py logs/paper/camsoftmax_heads/<time> [--out docs/tables]
    python scripts/make_table.py logs/train/multiruns/<time> --rows loss --column LFW=lfw/acc --column YTF=ytf/acc

Rows, columns and published reference numbers come from the ``table:`` entry of a paper config (configs/paper/);
for other multiruns give ``--rows`` and ``--column``. Exit status 2: the directory is not a multirun, or its jobs
used different evaluation protocols or setups (the message says what differs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facetrain.reporting import TableInputError, TableSpec, make_table


def _spec(args: argparse.Namespace) -> TableSpec | None:
    if not args.rows:
        return None
    columns = []
    for item in args.column or ["LFW=lfw/acc", "YTF=ytf/acc"]:
        label, sep, key = item.partition("=")
        if not sep or not label or not key:
            raise TableInputError(f"--column must be LABEL=METRIC_KEY, got {item!r}")
        columns.append({"label": label, "key": key, "percent": args.percent})
    name = args.name or Path(args.multirun_dir).resolve().name
    return TableSpec.from_mapping({"name": name, "rows_key": args.rows, "series_key": args.series, "columns": columns})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", help="the sweep directory (holds one subdirectory per job)")
    parser.add_argument("--out", default="docs/tables", help="output directory (default: docs/tables)")
    parser.add_argument("--rows", help="override naming the rows, instead of the config's table entry (e.g. loss)")
    parser.add_argument("--series", help="with --rows: override giving the x axis (e.g. data.label_noise.rate)")
    parser.add_argument("--column", action="append", help="with --rows: LABEL=METRIC_KEY, repeatable")
    parser.add_argument("--percent", action=argparse.BooleanOptionalAction, default=True, help="with --rows: x100")
    parser.add_argument("--name", help="with --rows: output file stem (default: the directory name)")
    args = parser.parse_args(argv)
    try:
        table, paths = make_table(args.multirun_dir, args.out, _spec(args))
    except TableInputError as error:
        print(f"make_table: {error}", file=sys.stderr)
        return 2
    left_out = len(table.exclusions)
    print(f"{table.spec.name}: {table.num_jobs} jobs, {table.num_included} in the table, {left_out} left out")
    for path in paths.values():
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
