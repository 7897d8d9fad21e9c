"""Fault injection for the fault tests: callbacks that ``train.py`` loads by ``_target_`` in a subprocess.

``train.py +callbacks.fault._target_=tests.faults.SignalAt +callbacks.fault.step=5 +callbacks.fault.signal_name=KILL``
kills (or terminates) the training process when the given optimizer step is about to start, after every callback of
the previous step (including checkpointing) has run. ``RecordSamples`` writes one line per training batch with a
fingerprint of each image, so two runs' sample sequences can be compared.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class SignalAt(pl.Callback):
    """Sends ``SIG<signal>`` to this process at the start of optimizer step ``step`` (0-based global step)."""

    def __init__(self, step: int, signal_name: str = "KILL") -> None:
        self.step = step
        self.signum = signal.Signals[f"SIG{signal_name}"]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        # Only in a fresh run: the resumed run is the same command plus ckpt_path=..., and must not die again.
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signum)


class RecordSamples(pl.Callback):
    """Appends ``<global step> <fingerprint> ...`` per training batch to ``path`` (one fingerprint per image)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        images = batch[0].detach().to(torch.float64).flatten(1)
        weights = torch.arange(1, images.shape[1] + 1, dtype=torch.float64)
        prints = (images * weights).sum(1)  # position-weighted sum: distinct images give distinct values
        with self.path.open("a") as f:
            f.write(f"{trainer.global_step} " + " ".join(f"{v:.6e}" for v in prints.tolist()) + "\n")
            f.flush()
            os.fsync(f.fileno())
