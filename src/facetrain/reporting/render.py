"""Writing a :class:`~facetrain.reporting.table.Table` as Markdown, CSV and LaTeX.

Our rows show ``mean ± std (n=k)`` over seeds (sample std; none for a single run); published rows follow, marked
"published" with their citation, and everything left out is listed with the reason.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from facetrain.reporting.table import Cell, Column, Published, Table

__all__ = ["format_cell", "to_csv", "to_latex", "to_markdown"]

DASH = "–"


def _number(value: float, column: Column) -> str:
    return f"{value:.2f}" if column.percent else f"{value:.4f}"


def format_cell(cell: Cell, column: Column, latex: bool = False) -> str:
    """``97.12 ± 0.31 (n=3)``; ``97.12 (n=1)``; ``–`` without values."""
    if cell.mean is None:
        return "--" if latex else DASH
    pm = " $\\pm$ " if latex else " ± "
    std = "" if cell.std is None else f"{pm}{_number(cell.std, column)}"
    return f"{_number(cell.mean, column)}{std} (n={cell.n})"


def _published_value(entry: Published, column: Column, latex: bool = False) -> str:
    text = entry.texts.get(column.label)
    if text is None:
        return "--" if latex else DASH
    return text


def _published_in(table: Table, series: Any) -> list[Published]:
    return [p for p in table.spec.published if table.spec.series_key is None or p.series == series]


def _series_values(table: Table) -> list[Any]:
    """Our series values plus those only published ones have (e.g. a 60% noise rate we did not run)."""
    values = list(table.series)
    extra = sorted({p.series for p in table.spec.published if p.series is not None and p.series not in values})
    return values + extra if table.spec.series_key else values


def _body(table: Table) -> Iterator[tuple[str, str, Any, list[Any], str]]:
    """(kind, method, series value, per-column cell or Published, source) in display order."""
    spec = table.spec
    for x in _series_values(table):
        if x in table.series:
            for row in table.rows:
                if (row, x) in table.present:
                    cells = [table.cell(row, x, c) for c in spec.columns]
                    yield "ours", spec.row_label(row), x, cells, "this multirun"
        for entry in _published_in(table, x):
            source = f"{entry.setup}; {entry.source}" if entry.setup else entry.source
            yield "published", entry.row, x, [entry] * len(spec.columns), source


def _render(value: Any, column: Column, latex: bool = False) -> str:
    if isinstance(value, Published):
        return _published_value(value, column, latex)
    return format_cell(value, column, latex)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_pivot(table: Table) -> list[str]:
    """For series tables: the first column as rows × series (the layout of a robustness table)."""
    spec = table.spec
    column = spec.columns[0]
    xs = _series_values(table)
    head = ["Method", "Result"] + [spec.series_text(x) for x in xs]
    lines = [
        f"### {column.label} by {(spec.series_label or spec.series_key or '').lower()}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in table.rows:
        values = [format_cell(table.cell(row, x, column), column) for x in xs]
        lines.append("| " + " | ".join([_md_escape(spec.row_label(row)), "ours", *values]) + " |")
    for name in dict.fromkeys(p.row for p in spec.published if column.label in p.values):
        by_x = {p.series: p for p in spec.published if p.row == name and column.label in p.values}
        values = [_published_value(by_x[x], column) if x in by_x else DASH for x in xs]
        lines.append("| " + " | ".join([_md_escape(name), "**published**", *values]) + " |")
    return [*lines, ""]


def to_markdown(table: Table) -> str:
    """The table, published rows, notes and the "not included" list as GitHub Markdown."""
    spec = table.spec
    unit = " Accuracies in %." if any(c.percent for c in spec.columns) else ""
    out = [
        f"## {spec.title}",
        "",
        f"Source: `{table.source}`: {table.num_jobs} jobs, {table.num_included} with results in the table. "
        f"Ours: mean ± sample std over seeds (n = runs in the cell).{unit} "
        "**published**: numbers reported in the literature for other setups (see Source), for context.",
        "",
    ]
    series_head = [spec.series_label or str(spec.series_key)] if spec.series_key else []
    head = ["Method", *series_head, "Result", *[c.label for c in spec.columns], "Source"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, method, x, values, source in _body(table):
        marked = "ours" if kind == "ours" else "**published**"
        series_cell = [spec.series_text(x)] if spec.series_key else []
        rendered = [_render(v, c) for v, c in zip(values, spec.columns)]
        out.append("| " + " | ".join(_md_escape(s) for s in [method, *series_cell, marked, *rendered, source]) + " |")
    out.append("")
    if spec.series_key:
        out += _md_pivot(table)
    if spec.notes:
        out += [f"- {note}" for note in spec.notes] + [""]
    out += ["### Not included", ""]
    if not table.exclusions:
        out += [f"Every job's values are in the table ({table.num_jobs} jobs).", ""]
    else:
        out += ["| Job | Method | " + (f"{series_head[0]} | " if series_head else "") + "Column | Reason |"]
        out += ["|---|---|" + ("---|" if series_head else "") + "---|---|"]
        for e in table.exclusions:
            series_cell = [e.series] if series_head else []
            cells = [e.job, e.row, *series_cell, e.column, e.reason]
            out.append("| " + " | ".join(_md_escape(s) for s in cells) + " |")
        out.append("")
    return "\n".join(out)


def to_csv(table: Table) -> str:
    """One line per table row: kind (ours/published), method, [series], mean/std/n per column, source."""
    spec = table.spec
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    series_head = [spec.series_key] if spec.series_key else []
    head = ["kind", "method", *series_head]
    for column in spec.columns:
        head += [f"{column.label} mean", f"{column.label} std", f"{column.label} n"]
    writer.writerow([*head, "source"])
    for kind, method, x, values, source in _body(table):
        line: list[Any] = [kind, method]
        if spec.series_key:
            line.append(x)  # the raw value (0.2), not the display text (20%)
        for value, column in zip(values, spec.columns):
            if isinstance(value, Published):
                line += [value.texts.get(column.label, ""), "", ""]
            else:
                line += [
                    "" if value.mean is None else f"{value.mean:.6g}",
                    "" if value.std is None else f"{value.std:.6g}",
                    value.n,
                ]
        writer.writerow([*line, source])
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "§": r"\S{}",
    "π": r"$\pi$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment; published rows in a second block, each with a numbered source note."""
    spec = table.spec
    n_cols = len(spec.columns) + 2 + (1 if spec.series_key else 0)
    series_head = [latex_escape(spec.series_label or str(spec.series_key))] if spec.series_key else []
    lines = [
        f"% Generated by scripts/make_table.py from {table.source}; needs \\usepackage{{booktabs}}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(spec.title)}. Ours: mean $\\pm$ sample std over seeds (n runs). "
        "Published: reported results of other setups, for context.}",
        f"\\label{{tab:{spec.name}}}",
        "\\begin{tabular}{l" + "l" * (1 + len(series_head)) + "c" * len(spec.columns) + "}",
        "\\toprule",
        " & ".join(["Method", *series_head, "", *[latex_escape(c.label) for c in spec.columns]]) + " \\\\",
        "\\midrule",
    ]
    sources: list[str] = []
    published_started = False
    for kind, method, x, values, source in _body(table):
        name = latex_escape(method)
        if kind == "published":
            if not published_started:
                lines += ["\\midrule", f"\\multicolumn{{{n_cols}}}{{l}}{{\\emph{{Published}}}} \\\\"]
                published_started = True
            if source not in sources:
                sources.append(source)
            name = f"\\emph{{{name}}}\\textsuperscript{{{sources.index(source) + 1}}}"
        series_cell = [latex_escape(spec.series_text(x))] if spec.series_key else []
        rendered = [_render(v, c, latex=True) for v, c in zip(values, spec.columns)]
        lines.append(" & ".join([name, *series_cell, kind, *rendered]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    notes = [f"\\textsuperscript{{{i + 1}}}~{latex_escape(s)}" for i, s in enumerate(sources)]
    notes += [latex_escape(n) for n in spec.notes]
    if table.exclusions:
        count = len(table.exclusions)
        notes.append(f"{count} value(s) or job(s) not included (missing, undefined or failed): see {spec.name}.md.")
    if notes:
        lines += ["", "\\par\\smallskip\\footnotesize", " \\\\\n".join(notes)]
    lines += ["\\end{table}", ""]
    return "\n".join(lines)
