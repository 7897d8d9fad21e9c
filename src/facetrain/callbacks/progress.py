"""The training loss in the progress bar without a device-to-host read per step.

Lightning converts every value logged with ``prog_bar=True`` to a Python number after *every* batch
(``_LoggerConnector.on_batch_end``), even when nothing was logged since: on a GPU each conversion waits for the
device to drain its queue. The training module therefore logs nothing to the progress bar; at its logging steps
(which read the device anyway) it keeps host copies in ``progress_values``, and :class:`ProgressBarValues` adds them
to whichever bar the trainer shows (TQDM or Rich).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

__all__ = ["ProgressBarValues"]


class ProgressBarValues(pl.Callback):
    """Shows the module's host-side ``progress_values`` (e.g. the loss of the last logging step) in the progress bar.

    Config ``callbacks/progress_bar.yaml``, part of ``callbacks=default``; with ``trainer.enable_progress_bar=false``
    it does nothing.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if bar is None or getattr(bar.get_metrics, "_adds_progress_values", False):
            return
        read = bar.get_metrics

        def get_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
            return {**read(trainer, pl_module), **getattr(pl_module, "progress_values", {})}

        get_metrics._adds_progress_values = True  # type: ignore[attr-defined]
        bar.get_metrics = get_metrics  # type: ignore[method-assign]
