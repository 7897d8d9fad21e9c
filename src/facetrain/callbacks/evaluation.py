"""The one evaluation callback: schedules any (evaluation set, protocol) during or after training.

Each :class:`Evaluation` owns one set (``facetrain.evaluation.sets``) and one protocol
(``facetrain.evaluation.protocols``) and runs every ``every_n_epochs`` epochs and at the end of training. Per
evaluation it embeds the set once (sharded over DDP ranks and gathered, padding removed), computes every metric and
curve of the protocol from those embeddings, logs the defined ``val/<name>/<metric>`` scalars (what
``ModelCheckpoint`` monitors) and the curves as TensorBoard figures, writes the curves as PNG + CSV to
``<dirpath>/curves/`` and the embeddings to ``<dirpath>/embeddings/<name>.npy`` with the image order in
``<name>.txt`` (:mod:`facetrain.evaluation.embedding_files`; ``evaluate.py embeddings_dir=...`` reads them back and
recomputes the metrics without a model). JSON-ready results (undefined metrics as ``"undefined"`` with a reason, and
the options used) are kept as ``<name>/<key>`` in :attr:`Evaluation.results` for ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from facetrain.callbacks.tensorboard import tensorboard_writers
from facetrain.classifier.ddp import shared_buffers
from facetrain.data.datamodule import DataSource
from facetrain.data.transforms import Transform
from facetrain.evaluation.embed import DecodedImages, embed_images, flip_mode
from facetrain.evaluation.embedding_files import write_embeddings
from facetrain.evaluation.plots import write_curve_csv
from facetrain.evaluation.protocols import Artifact, Protocol
from facetrain.evaluation.sets import EvaluationSet
from facetrain.evaluation.verification import MetricReport

log = logging.getLogger(__name__)

__all__ = ["Evaluation"]


def _broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Without SyncBatchNorm each DDP rank updates its running statistics from its own batches; DDP only re-broadcasts
    them at the next forward. Evaluating before that would embed each shard with slightly different statistics from
    the checkpointed ones, and the metrics would differ from a single-process evaluation. Buffers DDP ignores (a sharded
    classifier's per-rank state, e.g. Partial FC's momentum rows) are each rank's own and are left alone.
    """
    for _, buffer in shared_buffers(module):
        torch.distributed.broadcast(buffer, src=0)


class Evaluation(pl.Callback):
    """Schedule, embedding (DDP-sharded), logging, curves and embeddings files of one (set, protocol) pair.

    Args:
        name: Metric prefix (``lfw`` gives ``val/lfw/acc`` and ``lfw/acc``) and the embeddings file name.
        set: The evaluation set, or a zero-argument loader of it (a Hydra ``_partial_``); a loader runs after the
            options are checked and ``source`` has made the files.
        protocol: Computes the report from the set's embeddings.
        transform: Deterministic albumentations pipeline for evaluation images.
        every_n_epochs: Evaluate after every n-th training epoch (and always at the end).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers for decoding.
        flip: Test-time flip fusion: ``none``, ``sum`` (raw embeddings added, then L2 norm; InsightFace) or
            ``concat`` (L2-normalised halves concatenated; SphereFace/CosFace). true/false mean sum/none.
        source: Optional generator whose ``ensure()`` creates the data first (the synthetic dataset).
        dirpath: Run directory; curves go to ``<dirpath>/curves/<name>_<kind>.{png,csv}``, embeddings to
            ``<dirpath>/embeddings/<name>.{npy,txt}``. None uses the trainer's ``default_root_dir``.
        save_curves: Write the curve PNG and CSV files (the TensorBoard figures are logged either way).
        save_embeddings: Write the embeddings of each evaluation (the last one stays).
        cache: Decode the set once per run and keep it as uint8 (:class:`DecodedImages`) instead of re-reading the
            files at every evaluation; false re-reads them (for sets too large for memory).
    """

    def __init__(
        self,
        name: str,
        set: EvaluationSet | Callable[[], EvaluationSet],  # noqa: A002 - the config key users write
        protocol: Protocol,
        transform: Transform | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 128,
        num_workers: int = 0,
        flip: bool | str = "none",
        source: DataSource | None = None,
        dirpath: str | None = None,
        save_curves: bool = True,
        save_embeddings: bool = True,
        cache: bool = True,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"eval.{name}.every_n_epochs must be >= 1, got {every_n_epochs}")
        try:
            self.flip = flip_mode(flip)
        except ValueError as error:
            raise ValueError(f"eval.{name}.{error}") from None
        self.name = name
        self.protocol = protocol
        self.transform = transform
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dirpath = dirpath
        self.save_curves = bool(save_curves)
        self.save_embeddings = bool(save_embeddings)
        self.cache = bool(cache)
        self._decoded: DecodedImages | None = None
        if source is not None:
            source.ensure()
        self.set: EvaluationSet = set() if callable(set) else set
        protocol.check(self.set)
        self.results: dict[str, Any] = {}
        self.report: MetricReport | None = None
        self.embeddings: np.ndarray | None = None
        self._evaluated_at_step: int | None = None

    @property
    def paths(self) -> np.ndarray:
        """Image names in embedding order."""
        return self.set.paths

    def options(self) -> dict[str, Any]:
        """Evaluation options recorded next to the results."""
        return {"flip": self.flip, **self.protocol.options(), **self.set.options}

    # --- evaluation ---------------------------------------------------------------------------------------------
    def images(self) -> np.ndarray | DecodedImages:
        """What :func:`embed_images` reads: the uint8 cache (built on first use) or the file paths."""
        if self.set.decode is not None:
            # An in-memory pack (.bin): kept decoded between evaluations only with cache (without it the images are
            # decoded again each time, as files would be re-read).
            if self._decoded is None:
                self._decoded = DecodedImages(self.set.decode, len(self.set), self.transform)
            if not self.cache:
                self._decoded.cache.clear()
            return self._decoded
        if not self.cache:
            return self.paths
        if self._decoded is None:
            self._decoded = DecodedImages.from_paths(self.paths, self.transform)
        return self._decoded

    def embed(self, module: pl.LightningModule | torch.nn.Module, trainer: pl.Trainer | None = None) -> np.ndarray:
        """L2-normalised (flip-fused) embeddings of :attr:`paths` from ``module.embed``, sharded under DDP; with
        their raw norms for a protocol that weighs by them (``protocol.unit_embeddings`` false, IJB's N1)."""
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if world > 1:
            _broadcast_buffers(module)
        was_training = module.training
        module.eval()
        # The trainer's precision (bf16 autocast under trainer=gpu; nothing under 32-true), as in training.
        precision = trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()
        try:
            with precision:
                return embed_images(
                    module.embed,
                    self.images(),
                    self.transform,
                    module.device,
                    batch_size=self.batch_size,
                    num_workers=self.num_workers,
                    flip=self.flip,
                    rank=rank,
                    world_size=world,
                    all_gather=(lambda t: trainer.strategy.all_gather(t)) if trainer is not None else None,
                    normalize=self.protocol.unit_embeddings,
                )
        finally:
            module.train(was_training)

    def evaluate(
        self, module: pl.LightningModule | torch.nn.Module, trainer: pl.Trainer | None = None
    ) -> dict[str, Any]:
        """Embed the set once and compute the protocol's metrics and curves from those embeddings.

        Returns:
            JSON-ready results ``<name>/<key>`` (also kept in :attr:`results`; the full report with curves in
            :attr:`report`).
        """
        # Embedded once per evaluation; every metric, figure, CSV and the embeddings file reuse these.
        return self.evaluate_embeddings(self.embed(module, trainer))

    def evaluate_embeddings(self, embeddings: np.ndarray) -> dict[str, Any]:
        """The protocol's results from given embeddings of :attr:`paths` (e.g. :func:`read_embeddings`)."""
        self.embeddings = embeddings
        report = self.protocol(embeddings, self.set)
        report.options.update(self.options())
        self.report = report
        self.results = report.to_json(f"{self.name}/")
        return self.results

    def scalars(self) -> dict[str, float]:
        """The defined metrics of the last evaluation as ``val/<name>/<metric>`` (undefined ones left out)."""
        return self.report.scalars(f"val/{self.name}/") if self.report is not None else {}

    def output_dir(self, trainer: pl.Trainer | None = None) -> Path | None:
        """``dirpath``, or the trainer's ``default_root_dir``; None when neither is known."""
        root = self.dirpath if self.dirpath is not None else (trainer.default_root_dir if trainer else None)
        return None if root is None else Path(root)

    def curve_dir(self, trainer: pl.Trainer | None = None) -> Path | None:
        """Where curve files go: ``<dirpath>/curves`` (or under the trainer's ``default_root_dir``)."""
        root = self.output_dir(trainer)
        return None if root is None else root / "curves"

    def artifacts(self, title: str) -> list[Artifact]:
        """Figures and their CSV data for the last evaluation."""
        return [] if self.report is None else self.protocol.artifacts(self.report, title)

    def write_curves(self, directory: str | os.PathLike[str] | None = None, step: int | None = None) -> list[Path]:
        """Save the last evaluation's curves as ``<name>_<kind>.png`` and ``.csv`` files in ``directory``."""
        directory = Path(directory) if directory is not None else self.curve_dir()
        if directory is None or self.report is None:
            return []
        return self._write(directory, self.artifacts(self._title(step)))

    def write_embeddings(self, directory: str | os.PathLike[str]) -> Path | None:
        """Save the last evaluation's embeddings as ``<directory>/<name>.npy`` + ``<name>.txt``."""
        if self.embeddings is None:
            return None
        return write_embeddings(directory, self.name, self.embeddings, self.paths)

    def _title(self, step: int | None) -> str:
        return self.name if step is None else f"{self.name} (step {step})"

    def _write(self, directory: Path, artifacts: list[Artifact]) -> list[Path]:
        written = []
        directory.mkdir(parents=True, exist_ok=True)
        for kind, fig, columns in artifacts:
            png = directory / f"{self.name}_{kind}.png"
            fig.savefig(png, dpi=120)
            written += [png, write_curve_csv(directory / f"{self.name}_{kind}.csv", columns)]
        return written

    def _run(self, trainer: pl.Trainer, module: pl.LightningModule, via_module_log: bool) -> None:
        self.evaluate(module, trainer)
        self._evaluated_at_step = trainer.global_step
        scalars = self.scalars()
        if via_module_log:
            module.log_dict(scalars, rank_zero_only=True)
        elif trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        if trainer.is_global_zero:
            self._publish(trainer)
            summary = ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in scalars.items())
            log.info("epoch %d step %d %s: %s", trainer.current_epoch, trainer.global_step, self.name, summary)

    def _publish(self, trainer: pl.Trainer) -> None:
        artifacts = self.artifacts(self._title(trainer.global_step))
        for writer in tensorboard_writers(trainer):
            for kind, fig, _ in artifacts:
                writer.add_figure(f"val/{self.name}/{kind}", fig, global_step=trainer.global_step, close=False)
        root = self.output_dir(trainer)
        if root is None:
            return
        if self.save_curves:
            self._write(root / "curves", artifacts)
        if self.save_embeddings:
            self.write_embeddings(root / "embeddings")

    # --- Lightning hooks ----------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs == 0 or last:
            self._run(trainer, pl_module, via_module_log=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training can also stop on max_steps or mid-epoch; the final weights are always evaluated.
        if self._evaluated_at_step != trainer.global_step:
            self._run(trainer, pl_module, via_module_log=False)
