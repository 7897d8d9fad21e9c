"""Evaluation figures (for TensorBoard and PNG files) and the CSV files behind them (matplotlib, headless).

Figures are bare :class:`~matplotlib.figure.Figure` objects, not pyplot ones, so no display backend is involved and
nothing accumulates in pyplot's figure registry when a figure is only saved to a file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from facetrain.utils.io import atomic_write  # noqa: E402

__all__ = [
    "cmc_figure",
    "dir_far_figure",
    "read_curve_csv",
    "roc_figure",
    "roc_overlay_figure",
    "score_histogram_figure",
    "subsample_curve",
    "write_curve_csv",
]


def subsample_curve(fpr: np.ndarray, max_points: int = 2000) -> np.ndarray:
    """Indices of at most about ``max_points`` ROC points that keep the curve's shape on a log-FAR axis.

    A ROC over millions of pairs has millions of points; a CSV or a figure needs only the points nearest to a
    log-spaced FAR grid, plus the first and last point.
    """
    n = len(fpr)
    if n <= max_points:
        return np.arange(n)
    positive = fpr[fpr > 0]
    low = float(positive.min()) if positive.size else 1e-12
    grid = np.concatenate([[0.0], np.logspace(np.log10(low), 0.0, max_points - 2)])
    # For every grid FAR the last point at or below it: the TAR@FAR operating point.
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return np.unique(np.concatenate([[0, n - 1], idx.clip(0, n - 1)]))


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, title: str) -> Figure:
    """ROC curve with a logarithmic false-accept axis, the way face verification results are read."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    keep = fpr > 0
    ax.semilogx(fpr[keep], tpr[keep], lw=1.5)
    _roc_axes(ax, float(fpr[keep].min()) if keep.any() else 1e-4)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _roc_axes(ax: matplotlib.axes.Axes, min_far: float) -> None:
    ax.set_xlim(max(min_far, 1e-6), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)


def roc_overlay_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC") -> Figure:
    """Several ROC curves (label → (fpr, tpr)) on one log-FAR axis, for comparing runs."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    lowest = 1.0
    for label, (fpr, tpr) in curves.items():
        keep = fpr > 0
        if keep.any():
            lowest = min(lowest, float(fpr[keep].min()))
        ax.semilogx(fpr[keep], tpr[keep], lw=1.4, label=label)
    _roc_axes(ax, lowest)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def score_histogram_figure(
    genuine: np.ndarray, impostor: np.ndarray, threshold: float | None, title: str, xlabel: str = "cosine similarity"
) -> tuple[Figure, dict[str, np.ndarray]]:
    """Overlaid density histograms of genuine and impostor pair scores, with the chosen threshold.

    Returns:
        The figure and its data (``bin_left``, ``bin_right``, ``genuine``, ``impostor`` counts) for a CSV file.
    """
    both = np.concatenate([genuine, impostor])
    edges = np.histogram_bin_edges(both, bins=min(60, max(10, both.size // 20)))
    gen_counts, _ = np.histogram(genuine, bins=edges)
    imp_counts, _ = np.histogram(impostor, bins=edges)
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    width = np.diff(edges)
    for counts, label, colour in [(gen_counts, "genuine", "C0"), (imp_counts, "impostor", "C3")]:
        density = counts / max(counts.sum(), 1) / width
        ax.stairs(density, edges, fill=True, alpha=0.45, color=colour, label=f"{label} ({counts.sum()})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    data = {"bin_left": edges[:-1], "bin_right": edges[1:], "genuine": gen_counts, "impostor": imp_counts}
    return fig, data


def dir_far_figure(fars: np.ndarray, dirs: np.ndarray, title: str, std: np.ndarray | None = None) -> Figure:
    """Open-set detection-and-identification rate against false-alarm rate (log FAR axis)."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    ax.semilogx(fars, dirs, marker=".", lw=1.5)
    if std is not None:
        ax.fill_between(fars, np.clip(dirs - std, 0, 1), np.clip(dirs + std, 0, 1), alpha=0.25)
    ax.set_xlim(max(float(np.min(fars)), 1e-6), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false alarm rate")
    ax.set_ylabel("detection and identification rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def cmc_figure(curves: Mapping[str, np.ndarray], title: str) -> Figure:
    """Cumulative match characteristic curves (label → identification rate at rank 1, 2, ...), one per gallery."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    for label, rates in curves.items():
        ax.plot(np.arange(1, len(rates) + 1), rates, marker=".", lw=1.5, label=label)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def write_curve_csv(path: str | os.PathLike[str], columns: Mapping[str, Sequence[float] | np.ndarray]) -> Path:
    """Write equal-length columns as a CSV with a header row, atomically (a reader never sees half a file)."""
    path = Path(path)
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"CSV columns differ in length: { {k: len(a) for k, a in arrays.items()} }")
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(arrays))
        writer.writerows(zip(*(a.tolist() for a in arrays.values())))
    return path


def read_curve_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a CSV written by :func:`write_curve_csv` back into float columns."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    header, body = rows[0], rows[1:]
    data = np.asarray(body, dtype=np.float64).reshape(len(body), len(header))
    return {name: data[:, i] for i, name in enumerate(header)}
