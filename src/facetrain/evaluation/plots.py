"""Figures for TensorBoard (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, title: str) -> Figure:
    """ROC curve with a logarithmic false-accept axis, the way face verification results are read."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    keep = fpr > 0
    ax.semilogx(fpr[keep], tpr[keep], lw=1.5)
    ax.set_xlim(max(float(fpr[keep].min()) if keep.any() else 1e-4, 1e-5), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
