"""What the configured head does, made visible: its target-logit curve and the angle histograms of each epoch.

:class:`HeadCurves` is a Lightning callback (config ``callbacks/head_curves.yaml``). At the start of training it draws
the target logit s·margin(cos θ) of the configured head against θ ∈ [0°, 180°], with the plain s·cos θ for reference,
logs it to TensorBoard as ``head/target_logit`` and saves ``target_logit.png`` in the run directory.

"Schedule" heads, whose target logit follows the optimizer-step count, are drawn twice: at the start and as they will
be at the end of the run (``FaceHead.at_step`` with ``trainer.estimated_stepping_batches``, known before training).
These are cam-softmax with a step policy (c from π/2, where it equals s·cos θ, towards its ``stop``) and SphereFace
(λ annealed to λ_min). Heads whose margin follows data statistics are drawn once, since their end value is not known
without training: CurricularFace (its t moves the hard negatives, not the target), AdaFace and MagFace (the margin
depends on feature norms; MagFace is drawn at the mid-range norm) and cam-softmax with the adaptive c policy.

During every training epoch it keeps a bounded uniform sample of the target angle θ_y and of the nearest non-target
angle (taken from the ``cos_target`` / ``cos_nearest`` entries that ``FaceRecognitionModule.training_step`` returns
at its logging steps, every ``trainer.log_every_n_steps``: the other steps read nothing back from the device) and
logs both as TensorBoard histograms at the end of the epoch.

It only reads detached tensors and uses its own random generator, so a run with or without it trains identically.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from facetrain.callbacks.tensorboard import tensorboard_writers
from facetrain.losses.base import CosineHead, FaceHead

log = logging.getLogger(__name__)

__all__ = ["BoundedSample", "HeadCurves", "target_logit_curve", "target_logit_figure"]


def target_logit_curve(head: FaceHead, thetas_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Target logit of ``head`` and the plain reference s·cos θ at the given angles.

    The head's own ``margin`` is evaluated on a two-column cosine matrix whose first column is the target, so the
    curve is exactly what the head computes in training (including schedules at their current value). The figure is
    a bare :class:`~matplotlib.figure.Figure`, not a pyplot one, so no display backend is involved and nothing leaks
    into pyplot's figure registry.

    Args:
        head: The configured head; only :class:`CosineHead` subclasses have a margin curve.
        thetas_deg: Target angles in degrees.

    Returns:
        ``(s·margin(cos θ), s·cos θ)`` as float64 arrays, or None for heads without a margin (plain softmax). A head
        that scales by the feature norm (``scale=None``) is drawn with s = 1.
    """
    if not isinstance(head, CosineHead):
        return None
    scale = head.scale if head.scale is not None else 1.0
    cos = torch.cos(torch.deg2rad(torch.as_tensor(thetas_deg, dtype=torch.float64)))
    # A second, non-target column keeps the matrix B×C with C >= 2, as the heads expect.
    matrix = torch.stack([cos, torch.zeros_like(cos)], dim=1)
    labels = torch.zeros(len(cos), dtype=torch.long)
    with torch.no_grad():
        target = head.margin(matrix, labels)[:, 0]
    return (scale * target).numpy(), (scale * cos).numpy()


def target_logit_figure(
    thetas_deg: np.ndarray,
    target: np.ndarray,
    plain: np.ndarray,
    title: str,
    ylabel: str = "logit",
    end: tuple[np.ndarray, str] | None = None,
) -> Figure:
    """Line plot of the head's target logit and the plain s·cos θ against θ in degrees.

    Args:
        thetas_deg: Target angles in degrees.
        target: Target logit at the start of training.
        plain: Reference s·cos θ.
        title: Figure title.
        ylabel: Label of the y axis.
        end: ``(target logit, label)`` at the end of the head's schedule, drawn as a third line; None for none.
    """
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    ax.plot(thetas_deg, plain, "--", color="gray", lw=1.2, label="s·cos θ (no margin)")
    ax.plot(thetas_deg, target, color="C0", lw=1.8, label="target logit" if end is None else "target logit, start")
    if end is not None:
        ax.plot(thetas_deg, end[0], color="C3", lw=1.8, label=end[1])
    ax.set_xlim(0, 180)
    ax.set_xticks(range(0, 181, 30))
    ax.set_xlabel("target angle θ (degrees)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class BoundedSample:
    """A uniform random sample of at most ``capacity`` values from a stream (reservoir sampling, algorithm R).

    Memory stays bounded however long the epoch; every value seen so far has the same chance to be kept. Uses its
    own generator, so drawing here never shifts the global random stream that training uses.

    Args:
        capacity: Maximum number of values kept.
        seed: Seed of the private generator.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self._generator = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forgets every value (start of an epoch)."""
        self._values = torch.empty(0, dtype=torch.float32)
        self.seen = 0

    def add(self, values: torch.Tensor) -> None:
        """Offers a batch of values to the sample."""
        values = values.detach().reshape(-1).to("cpu", torch.float32)
        room = self.capacity - len(self._values)
        if room > 0:
            self._values = torch.cat([self._values, values[:room]])
            self.seen += min(room, len(values))
            values = values[room:]
        if len(values) == 0:
            return
        # Value number n (1-based) replaces a random slot with probability capacity / n.
        n = torch.arange(self.seen + 1, self.seen + len(values) + 1, dtype=torch.float64)
        slots = (torch.rand(len(values), generator=self._generator, dtype=torch.float64) * n).long()
        keep = slots < self.capacity
        self._values[slots[keep]] = values[keep]
        self.seen += len(values)

    def values(self) -> torch.Tensor:
        """The kept values (a copy)."""
        return self._values.clone()

    def __len__(self) -> int:
        return len(self._values)


class HeadCurves(pl.Callback):
    """Target-logit curve at the start of training and per-epoch angle histograms.

    Args:
        dirpath: Where ``target_logit.png`` is written; None uses ``trainer.default_root_dir``.
        max_samples: Values kept per histogram per epoch (a uniform sample of all training samples of the epoch).
        num_points: Points of the target-logit curve over [0°, 180°].
        histograms: Whether to collect and log the angle histograms.
        seed: Seed of the sampling generator.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        max_samples: int = 20_000,
        num_points: int = 361,
        histograms: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_points < 2:
            raise ValueError(f"head_curves num_points must be >= 2, got {num_points!r}")
        self.dirpath = dirpath
        self.num_points = int(num_points)
        self.histograms = bool(histograms)
        self.target = BoundedSample(max_samples, seed)
        self.nearest = BoundedSample(max_samples, seed + 1)
        self.figure_path: Path | None = None

    # --- the curve ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        head = getattr(pl_module, "head", None)
        thetas = np.linspace(0.0, 180.0, self.num_points)
        curve = target_logit_curve(head, thetas) if isinstance(head, FaceHead) else None
        if curve is None:
            log.info("head_curves: %s has no margin curve to draw", type(head).__name__)
            return
        # Heads that scale by the feature norm are drawn per unit norm (see target_logit_curve).
        ylabel = "logit / ‖x‖" if isinstance(head, CosineHead) and head.scale is None else "logit"
        end = _end_curve(head, trainer, thetas, curve[0])
        fig = target_logit_figure(thetas, *curve, title=_describe(head), ylabel=ylabel, end=end)
        self.figure_path = self._save(fig, trainer)
        for writer in tensorboard_writers(trainer):
            writer.add_figure("head/target_logit", fig, global_step=trainer.global_step, close=False)

    def _save(self, fig: Figure, trainer: pl.Trainer) -> Path:
        directory = Path(self.dirpath if self.dirpath is not None else trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "target_logit.png"
        fig.savefig(path, dpi=120)
        log.info("head_curves: target-logit curve written to %s", path)
        return path

    # --- the histograms -----------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.target.reset()
        self.nearest.reset()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not (self.histograms and trainer.is_global_zero and isinstance(outputs, Mapping)):
            return
        if "cos_target" in outputs and "cos_nearest" in outputs:
            self.target.add(outputs["cos_target"])
            self.nearest.add(outputs["cos_nearest"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.histograms and trainer.is_global_zero and len(self.target)):
            return
        for writer in tensorboard_writers(trainer):
            for tag, sample in [("head/theta_target", self.target), ("head/theta_nearest", self.nearest)]:
                degrees = torch.rad2deg(torch.acos(sample.values().clamp(-1.0, 1.0)))
                writer.add_histogram(tag, degrees, global_step=trainer.global_step, bins="auto")


def _end_curve(
    head: FaceHead, trainer: pl.Trainer, thetas: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, str] | None:
    """Target logit at the end of the run for a head with a step schedule; None without one or if it stays the same."""
    total = trainer.estimated_stepping_batches
    if not np.isfinite(total):  # a run without max_epochs / max_steps has no end to draw
        return None
    end_head = head.at_step(int(total), int(total))
    curve = target_logit_curve(end_head, thetas) if end_head is not None else None
    if curve is None or np.allclose(curve[0], start):  # e.g. cam-softmax with a fixed c
        return None
    return curve[0], f"end of run (step {int(total)})"


def _describe(head: FaceHead) -> str:
    """Figure title: the head's class and hyper-parameters (``extra_repr``), wrapped to fit the figure width."""
    return textwrap.fill(f"{type(head).__name__}({head.extra_repr()})", width=60)
