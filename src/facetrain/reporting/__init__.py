"""Results tables of multiruns: ``scripts/make_table.py <multirun dir>`` → Markdown, CSV, LaTeX and a PNG figure.

A paper config (``configs/paper/``) sweeps rows × seeds and carries a ``table:`` description; this package reads the
jobs (:mod:`.runs`), aggregates mean ± std over seeds and lists what it left out (:mod:`.table`), and writes the
outputs (:mod:`.render`, :mod:`.figure`).
"""

from __future__ import annotations

from pathlib import Path

from facetrain.reporting.runs import (
    Job,
    NotAMultirunError,
    ProtocolMismatchError,
    TableInputError,
    load_multirun,
)
from facetrain.reporting.table import Column, Published, Table, TableSpec, build_table, spec_from_jobs

__all__ = [
    "Column",
    "Job",
    "NotAMultirunError",
    "ProtocolMismatchError",
    "Published",
    "Table",
    "TableInputError",
    "TableSpec",
    "build_table",
    "load_multirun",
    "make_table",
    "spec_from_jobs",
    "write_outputs",
]


def write_outputs(table: Table, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<name>.md``, ``.csv``, ``.tex`` and ``.png`` into ``out_dir``; returns them by suffix."""
    from facetrain.reporting.figure import plot_table  # matplotlib only when writing
    from facetrain.reporting.render import to_csv, to_latex, to_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / table.spec.name
    paths = {"md": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv"), "tex": stem.with_suffix(".tex")}
    paths["md"].write_text(to_markdown(table), encoding="utf-8")
    paths["csv"].write_text(to_csv(table), encoding="utf-8")
    paths["tex"].write_text(to_latex(table), encoding="utf-8")
    paths["png"] = plot_table(table, stem.with_suffix(".png"))
    return paths


def make_table(multirun_dir: str | Path, out_dir: str | Path, spec: TableSpec | None = None) -> tuple[Table, dict]:
    """Read a multirun, aggregate it and write the outputs.

    Args:
        multirun_dir: A Hydra sweep directory (``<dir>/<job>/.hydra``).
        out_dir: Where the files go.
        spec: The table to make; by default the ``table:`` entry of the jobs' configs.

    Raises:
        TableInputError: Not a multirun, different protocols or setups, or no table description.
    """
    jobs = load_multirun(multirun_dir)
    table = build_table(jobs, spec or spec_from_jobs(jobs), source=str(multirun_dir))
    return table, write_outputs(table, out_dir)
