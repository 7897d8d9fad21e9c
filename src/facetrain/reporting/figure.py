"""Figures of a results table: grouped bars per column, or accuracy-vs-series lines (e.g. label-noise rate).

Error bars are the sample std over seeds (none for a single run). Only our runs are drawn: the published numbers come
from other networks and data, so they stay in the table, where their setup is written next to them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402 - after the backend choice
import numpy as np  # noqa: E402

from facetrain.reporting.table import Table  # noqa: E402

__all__ = ["plot_table"]


def _ylabel(table: Table) -> str:
    return "accuracy (%)" if all(c.percent for c in table.spec.columns) else "value"


def _legend_below(fig: plt.Figure, ax: plt.Axes) -> None:
    """One legend under the plot(s): inside, it hides bars and lines that reach the top."""
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 3), fontsize=8)


def _bars(table: Table, path: Path) -> None:
    spec = table.spec
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(spec.columns) + 0.4 * len(table.rows)), 4.2))
    width = 0.8 / max(len(table.rows), 1)
    positions = np.arange(len(spec.columns))
    for i, row in enumerate(table.rows):
        cells = [table.cell(row, None, c) for c in spec.columns]
        means = [np.nan if c.mean is None else c.mean for c in cells]
        stds = [0.0 if c.std is None else c.std for c in cells]
        ns = sorted({c.n for c in cells if c.n})
        label = f"{spec.row_label(row)} (n={'/'.join(map(str, ns)) or 0})"
        ax.bar(positions + (i - (len(table.rows) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(positions, [c.label for c in spec.columns])
    ax.set_ylabel(_ylabel(table))
    finite = [c.mean - (c.std or 0) for c in table.cells.values() if c.mean is not None]
    if finite:  # start near the data: accuracies of 60-100% are unreadable on a 0-100 axis
        ax.set_ylim(bottom=max(0.0, min(finite) - 5.0 if all(c.percent for c in spec.columns) else min(finite) * 0.9))
    ax.set_title(spec.title, fontsize=9)
    _legend_below(fig, ax)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _lines(table: Table, path: Path) -> None:
    spec = table.spec
    fig, axes = plt.subplots(1, len(spec.columns), figsize=(4.2 * len(spec.columns), 3.8), squeeze=False)
    xs = [x for x in table.series if x is not None]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    scale = 100.0 if spec.series_percent else 1.0
    # Numbers sit at their value (uneven grids stay uneven); other series values are evenly spaced categories.
    positions = [scale * float(x) for x in xs] if numeric else list(range(len(xs)))
    for ax, column in zip(axes[0], spec.columns):
        for row in table.rows:
            cells = [table.cell(row, x, column) for x in xs]
            keep = [i for i, c in enumerate(cells) if c.mean is not None]
            if not keep:
                continue
            ax.errorbar(
                [positions[i] for i in keep],
                [cells[i].mean for i in keep],
                yerr=[cells[i].std or 0.0 for i in keep],
                marker="o",
                capsize=3,
                label=spec.row_label(row),
            )
        if not numeric:
            ax.set_xticks(positions, [spec.series_text(x) for x in xs])
        ax.set_title(column.label, fontsize=9)
        ax.set_xlabel((spec.series_label or spec.series_key or "") + (" (%)" if spec.series_percent else ""))
        ax.set_ylabel(_ylabel(table))
        ax.grid(alpha=0.3)
    fig.suptitle(spec.title, fontsize=9)
    _legend_below(fig, axes[0][0])
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def plot_table(table: Table, path: str | Path) -> Path:
    """Write the table's figure as PNG: lines over the series when the table has one, grouped bars otherwise."""
    path = Path(path)
    # A series is an ordered x axis (noise rate): lines show the trend; without one, rows are categories: bars.
    (_lines if table.spec.series_key else _bars)(table, path)
    return path
