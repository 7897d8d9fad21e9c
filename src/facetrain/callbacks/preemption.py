"""Preemption: SIGTERM (a cluster taking the node back) or SIGINT (Ctrl+C) during fit becomes a checkpoint plus a
clear message on how to resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

__all__ = ["PreemptedError", "Preemption"]


class PreemptedError(RuntimeError):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; the message says how to continue."""

    def __init__(self, checkpoint: Path, signal_name: str) -> None:
        self.checkpoint = checkpoint
        self.signal_name = signal_name
        super().__init__(
            f"{signal_name} received: checkpoint written to {checkpoint}. Resume with the same command plus "
            f"ckpt_path=last (or ckpt_path={checkpoint})"
        )


class Preemption(pl.Callback):
    """On SIGTERM (cluster preemption) or SIGINT (Ctrl+C) during fit: write ``<dirpath>/preempted.ckpt``, then stop.

    Lightning notices SIGTERM between batches and raises ``SIGTERMException``; Ctrl+C raises ``KeyboardInterrupt``.
    This callback's ``on_exception`` saves the state after the last completed batch (weights, optimizer, schedule,
    the sample position of :class:`facetrain.data.sampler.ResumableSampler`, RNG states) through the trainer's
    checkpoint IO (:class:`facetrain.training.checkpoint.SafeCheckpointIO`: atomic, so a kill mid-write leaves no
    torn file), and the resumed run continues exactly. On SIGTERM the train task then exits with status 143
    (128 + SIGTERM) and a message that says how to resume; on Ctrl+C Lightning itself exits with status 1 after this
    hook.

    SLURM: Lightning's ``SLURMEnvironment`` handles SIGUSR1 requeue (``#SBATCH --signal=SIGUSR1@90``) with its own
    checkpoint; plain SIGTERM preemption is handled here; both resume with ``ckpt_path=last``.

    Args:
        dirpath: Directory of the checkpoint (the run's ``checkpoints/``).
    """

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        self.dirpath = Path(dirpath)
        self.saved: PreemptedError | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        name = "SIGTERM" if isinstance(exception, SIGTERMException) else "SIGINT"
        path = self.dirpath / "preempted.ckpt"
        trainer.save_checkpoint(path)  # collective under DDP: every rank calls it, rank 0 writes
        self.saved = PreemptedError(path, name)
        if trainer.is_global_zero:
            log.warning("%s", self.saved)
