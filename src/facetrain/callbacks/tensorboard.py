"""The TensorBoard writers among a trainer's loggers: where the callbacks log figures and histograms."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

__all__ = ["tensorboard_writers"]


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The experiments of the trainer's loggers that take figures and histograms (TensorBoard ``SummaryWriter``\\ s).

    Duck-typed rather than ``isinstance(logger, TensorBoardLogger)``, so that any logger whose experiment is a
    ``SummaryWriter`` (Lightning's or another integration's) receives the curves too.
    """
    writers = []
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure") and hasattr(experiment, "add_histogram"):
            writers.append(experiment)
    return writers
