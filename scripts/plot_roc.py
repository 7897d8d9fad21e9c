"""Overlay the ROC curves of several runs: ``python scripts/plot_roc.py RUN_DIR [RUN_DIR ...] --out roc.png``.

Every run directory written by ``train.py`` or ``evaluate.py`` holds ``curves/<set>_roc.csv`` (columns ``fpr``,
``tpr``, ``threshold``). A Hydra multirun directory (``logs/train/multiruns/<time>``) is expanded to its job
directories, each labelled with its overrides from ``.hydra/overrides.yaml``. ``--set lfw`` keeps one evaluation set.

Examples::

    python scripts/plot_roc.py logs/train/runs/2026-01-01_10-00-00 logs/evaluate/runs/2026-01-02_09-00-00 --out roc.png
    python scripts/plot_roc.py logs/train/multiruns/2026-01-01_12-00-00 --set lfw --out heads.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facetrain.evaluation.plots import read_curve_csv, roc_overlay_figure


def _job_label(job: Path) -> str:
    overrides = job / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        items = [line.strip().removeprefix("- ").strip("'\"") for line in overrides.read_text().splitlines()]
        items = [i for i in items if i and not i.startswith(("hydra.", "paths."))]
        if items:
            return f"{job.name}: {' '.join(items)}"
    return job.name


def _sort_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def find_roc_csvs(run_dirs: list[Path], sets: list[str] | None = None) -> list[tuple[str, Path]]:
    """``(label, csv)`` for every ROC CSV of the given run or multirun directories, in argument order."""
    found: list[tuple[str, Path]] = []
    for run in run_dirs:
        if not run.is_dir():
            raise FileNotFoundError(f"{run} is not a directory")
        own = sorted((run / "curves").glob("*_roc.csv"))
        jobs = [run] if own else sorted((d for d in run.iterdir() if (d / "curves").is_dir()), key=_sort_key)
        for job in jobs:
            label = _job_label(job)
            for csv_path in sorted((job / "curves").glob("*_roc.csv")):
                name = csv_path.name.removesuffix("_roc.csv")
                if sets is None or name in sets:
                    found.append((f"{label} [{name}]", csv_path))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or Hydra multirun directories")
    parser.add_argument("--out", type=Path, required=True, help="output figure (PNG, PDF or SVG)")
    parser.add_argument("--set", action="append", dest="sets", help="set to plot (repeatable); default all")
    parser.add_argument("--title", default="ROC", help="figure title")
    args = parser.parse_args(argv)
    try:
        found = find_roc_csvs(args.runs, args.sets)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not found:
        print(f"error: no curves/*_roc.csv under {', '.join(map(str, args.runs))}", file=sys.stderr)
        return 1
    curves = {}
    for label, csv_path in found:
        columns = read_curve_csv(csv_path)
        curves[label] = (columns["fpr"], columns["tpr"])
        print(f"{label}: {csv_path}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    roc_overlay_figure(curves, title=args.title).savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
