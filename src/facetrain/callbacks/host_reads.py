"""Host reads per training step: :class:`HostReadsPerStep` holds a training step to zero device-to-host reads.

It counts with :class:`facetrain.training.host_sync.HostReadCounter` (see there for what a host read is and what
the counter cannot see). A test and benchmark tool (``tests/unit/test_host_sync.py``, ``scripts/bench_train.py``):
it patches ``torch.Tensor`` while a fit runs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytorch_lightning as pl

from facetrain.training.host_sync import HostReadCounter

__all__ = ["HostReadsPerStep"]


class HostReadsPerStep(pl.Callback):
    """Counts the host reads of every training step with :class:`HostReadCounter` (tests and ``bench_train.py``).

    A step's window runs from its ``on_train_batch_start`` to the next one (or to the epoch end), so it holds the
    forward, backward and optimizer step, every callback's batch hooks and the fetch of the next batch. Put it first in
    the callback list, so that the epoch-end work (evaluation, checkpoints) falls outside every window.

    Attributes:
        steps: One ``(global_step, is_logging_step, reads)`` per training step, in order.
        sites: Where each step's reads came from (``global_step -> Counter``), for steps with reads.
        counter: The counter.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[int, bool, int]] = []
        self.sites: dict[int, Counter[str]] = {}
        self.counter = HostReadCounter()
        self.counter.enabled = False
        self._open: tuple[int, bool, int] | None = None

    def _close(self) -> None:
        if self._open is not None:
            step, logging_step, start = self._open
            self.steps.append((step, logging_step, self.counter.count - start))
            if self.counter.count > start:
                self.sites[step] = Counter(self.counter.sites)
            self.counter.sites.clear()
            self._open = None
        self.counter.enabled = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter.__enter__()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._close()
        self.counter.sites.clear()
        logging_step = (trainer.global_step + 1) % max(1, int(trainer.log_every_n_steps)) == 0
        self._open = (trainer.global_step, logging_step, self.counter.count)
        self.counter.enabled = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self.counter.__exit__()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.counter.__exit__()
