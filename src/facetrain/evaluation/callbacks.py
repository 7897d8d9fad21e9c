"""Lightning callbacks that run the LFW and YTF verification protocols during training.

Each callback owns one evaluation set and its schedule (every ``every_n_epochs`` epochs and at the end of training).
It logs ``val/<name>/<metric>`` scalars (what ``ModelCheckpoint`` monitors) and the ROC curve as a TensorBoard
figure, and keeps the last results as ``<name>/<metric>`` for ``metrics.json``. Files are parsed and checked when the
callback is built, so a pairs file naming a missing image stops the run before training starts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from facetrain.data.datamodule import DataSource
from facetrain.data.images import IMAGE_EXTENSIONS, Transform
from facetrain.data.protocols import PairList, check_images_exist, read_lfw_pairs, read_ytf_splits
from facetrain.evaluation.embed import embed_images
from facetrain.evaluation.plots import roc_figure
from facetrain.evaluation.verification import roc_metrics, verification_report

log = logging.getLogger(__name__)


def _broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Without SyncBatchNorm each DDP rank updates its running statistics from its own batches; DDP only re-broadcasts
    them at the next forward. Evaluating before that would embed each shard with slightly different statistics from
    the checkpointed ones, and the metrics would differ from a single-process evaluation.
    """
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer, src=0)


class VerificationCallback(pl.Callback):
    """Shared schedule, logging and bookkeeping of the verification protocols.

    Args:
        name: Metric prefix (``lfw`` gives ``val/lfw/acc`` and ``lfw/acc``).
        transform: Deterministic albumentations pipeline for evaluation images.
        every_n_epochs: Evaluate after every n-th training epoch (and always at the end).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers for decoding.
        flip: Fuse each embedding with that of the mirrored image (sum, then L2 norm).
        fars: False-accept rates at which TAR is reported.
        source: Optional generator whose ``ensure()`` creates the data first (the synthetic dataset).
    """

    def __init__(
        self,
        name: str,
        transform: Transform | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 128,
        num_workers: int = 0,
        flip: bool = False,
        fars: Sequence[float] = (1e-3, 1e-2),
        source: DataSource | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"eval.{name}.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.name = name
        self.transform = transform
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.flip = flip
        self.fars = tuple(float(f) for f in fars)
        if source is not None:
            source.ensure()
        self.results: dict[str, float] = {}
        self._evaluated_at_step: int | None = None

    # --- protocol-specific part -------------------------------------------------------------------------------
    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity of each pair from the embeddings of :attr:`paths` (same order)."""
        raise NotImplementedError

    paths: np.ndarray
    pairs: PairList

    # --- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, module: pl.LightningModule, trainer: pl.Trainer | None = None) -> dict[str, float]:
        """Embed the set with ``module.embed`` and return the protocol's metrics (also stored in ``results``)."""
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if world > 1:
            _broadcast_buffers(module)
        was_training = module.training
        module.eval()
        try:
            emb = embed_images(
                module.embed,
                self.paths,
                self.transform,
                module.device,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                flip=self.flip,
                rank=rank,
                world_size=world,
                all_gather=(lambda t: trainer.strategy.all_gather(t)) if trainer is not None else None,
            )
        finally:
            module.train(was_training)
        scores = self.pair_scores(emb)
        report = verification_report(scores, self.pairs.issame, folds=self.pairs.folds, fars=self.fars)
        self._roc = roc_metrics(scores, self.pairs.issame, fars=self.fars)
        self.results = {f"{self.name}/{k}": float(v) for k, v in report.items()}
        self.results[f"{self.name}/pairs"] = float(len(self.pairs))
        return self.results

    def _run(self, trainer: pl.Trainer, module: pl.LightningModule, via_module_log: bool) -> None:
        results = self.evaluate(module, trainer)
        self._evaluated_at_step = trainer.global_step
        scalars = {f"val/{k}": v for k, v in results.items() if not k.endswith("/pairs")}
        if via_module_log:
            module.log_dict(scalars, rank_zero_only=True)
        elif trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        if trainer.is_global_zero:
            self._log_roc(trainer)
            summary = ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in results.items() if not k.endswith("/pairs"))
            log.info("epoch %d step %d %s: %s", trainer.current_epoch, trainer.global_step, self.name, summary)

    def _log_roc(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):  # TensorBoard's SummaryWriter
                fig = roc_figure(self._roc["fpr"], self._roc["tpr"], f"{self.name} ROC (step {trainer.global_step})")
                experiment.add_figure(f"val/{self.name}/roc", fig, global_step=trainer.global_step)

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


class PairVerification(VerificationCallback):
    """Image-pair verification in the LFW View-2 layout (``root/<Name>/<Name>_<NNNN>.jpg`` + ``pairs.txt``).

    Folds are the 10 consecutive blocks of ``pairs.txt`` in file order; scores are cosine similarities.
    """

    def __init__(self, name: str, root: str, pairs_file: str, ext: str = "jpg", **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.root = Path(root)
        self.pairs = read_lfw_pairs(pairs_file, ext=ext)
        check_images_exist(self.pairs, self.root)
        unique, inverse = np.unique(np.asarray(self.pairs.left + self.pairs.right), return_inverse=True)
        self.paths = np.asarray([os.path.join(self.root, p) for p in unique])
        n = len(self.pairs)
        self._left, self._right = inverse[:n], inverse[n:]

    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return np.sum(embeddings[self._left] * embeddings[self._right], axis=1)


_FRAME_NUMBER = re.compile(r"\.(\d+)\.[^.]+$")


def _frame_key(name: str) -> tuple[int, str]:
    match = _FRAME_NUMBER.search(name)
    return (int(match.group(1)) if match else -1, name)


def list_frames(video_dir: Path, frames_per_video: int | None) -> list[str]:
    """Frames of one video in frame-number order, evenly subsampled to at most ``frames_per_video``."""
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder {str(video_dir)!r} named in the splits file does not exist")
    frames = sorted((f for f in os.listdir(video_dir) if f.lower().endswith(IMAGE_EXTENSIONS)), key=_frame_key)
    if not frames:
        raise FileNotFoundError(f"video folder {str(video_dir)!r} holds no frame images")
    if frames_per_video is not None and len(frames) > frames_per_video:
        keep = np.linspace(0, len(frames) - 1, frames_per_video).round().astype(int)
        frames = [frames[i] for i in keep]
    return [os.path.join(video_dir, f) for f in frames]


class VideoVerification(VerificationCallback):
    """Video-pair verification in the YouTube Faces layout (``root/<Name>/<video>/<frames>`` + ``splits.txt``).

    A video's embedding is the L2-normalised mean of its L2-normalised frame embeddings (the ArcFace choice,
    protocols.md §3.3); the 10 splits are the folds.

    Args:
        frames_per_video: Evenly spaced frames used per video; None uses all.
    """

    def __init__(
        self, name: str, root: str, splits_file: str, frames_per_video: int | None = None, **kwargs: object
    ) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        if frames_per_video is not None and frames_per_video < 1:
            raise ValueError(f"eval.{name}.frames_per_video must be >= 1 or null, got {frames_per_video}")
        self.root = Path(root)
        self.pairs = read_ytf_splits(splits_file)
        videos, inverse = np.unique(np.asarray(self.pairs.left + self.pairs.right), return_inverse=True)
        frames = [list_frames(self.root / v, frames_per_video) for v in videos]
        self.paths = np.asarray([p for f in frames for p in f])
        self._owner = np.repeat(np.arange(len(videos)), [len(f) for f in frames])
        n = len(self.pairs)
        self._left, self._right = inverse[:n], inverse[n:]

    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        sums = np.zeros((self._owner.max() + 1, embeddings.shape[1]))
        np.add.at(sums, self._owner, embeddings)
        videos = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12)
        return np.sum(videos[self._left] * videos[self._right], axis=1)
