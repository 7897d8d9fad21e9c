"""Lightning callbacks that run the LFW, YTF and open-set evaluation protocols during (or after) training.

Each callback owns one evaluation set and its schedule (every ``every_n_epochs`` epochs and at the end of training).
Per evaluation it embeds the set once (:attr:`EvaluationCallback.embeddings`) and computes every metric and curve of
that evaluation from those embeddings. It logs the defined ``val/<name>/<metric>`` scalars (what ``ModelCheckpoint``
monitors), logs the curves as TensorBoard figures and writes them as PNG + CSV files to ``<dirpath>/curves/``, and
keeps the JSON-ready results (undefined metrics as ``"undefined"`` with a reason, and the options used) as
``<name>/<key>`` in :attr:`EvaluationCallback.results` for ``metrics.json``. Files are parsed and checked when the
callback is built, so a pairs file naming a missing image stops the run before training starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from facetrain.data.binset import load_bin, load_video_bin
from facetrain.data.datamodule import DataSource
from facetrain.data.images import Transform, scan_identity_folders
from facetrain.data.protocols import (
    PairList,
    check_images_exist,
    fold_ids,
    list_frames,
    read_lfw_pairs,
    read_ytf_splits,
    select_frames,
)
from facetrain.evaluation.embed import DecodedImages, embed_images, flip_mode
from facetrain.evaluation.openset import (
    OpenSetTrial,
    blufr_identity,
    blufr_trials,
    open_set_report,
    read_blufr_lists,
    split_gallery_probe,
)
from facetrain.evaluation.plots import (
    dir_far_figure,
    roc_figure,
    score_histogram_figure,
    subsample_curve,
    write_curve_csv,
)
from facetrain.evaluation.verification import (
    DEFAULT_FARS,
    FoldScorer,
    MetricReport,
    greater_is_same_for,
    mean_subtracted_scorer,
    pair_scores,
    verification_report,
)
from facetrain.evaluation.verification import threshold_grid as make_threshold_grid

log = logging.getLogger(__name__)

__all__ = [
    "AGGREGATES",
    "EvaluationCallback",
    "OpenSetIdentification",
    "PairVerification",
    "VerificationCallback",
    "VideoBinVerification",
    "VideoPairVerification",
    "VideoVerification",
    "list_frames",
]

# YTF video-to-video scores (protocols.md §3.3): ArcFace's mean embedding, NormFace's mean of all frame-pair cosines,
# FaceNet's mean frame-pair similarity over the first k frames.
AGGREGATES = ("mean_embedding", "mean_pair_cosine", "first_k")

Artifact = tuple[str, Figure, dict[str, np.ndarray]]  # (kind, figure, CSV columns)


def _broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Without SyncBatchNorm each DDP rank updates its running statistics from its own batches; DDP only re-broadcasts
    them at the next forward. Evaluating before that would embed each shard with slightly different statistics from
    the checkpointed ones, and the metrics would differ from a single-process evaluation.
    """
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer, src=0)


def _check_fars(name: str, key: str, fars: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(f) for f in fars)
    bad = [f for f in values if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"eval.{name}.{key} must be false-accept rates in (0, 1], got {bad}")
    return values


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The TensorBoard writers among the trainer's loggers: the experiments that take figures and histograms.

    Duck-typed rather than ``isinstance(logger, TensorBoardLogger)``, so that any logger whose experiment is a
    ``SummaryWriter`` (Lightning's or another integration's) receives the curves too.
    """
    writers = []
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure") and hasattr(experiment, "add_histogram"):
            writers.append(experiment)
    return writers


class EvaluationCallback(pl.Callback):
    """Shared schedule, embedding, logging, curves and bookkeeping of the evaluation protocols.

    Args:
        name: Metric prefix (``lfw`` gives ``val/lfw/acc`` and ``lfw/acc``).
        transform: Deterministic albumentations pipeline for evaluation images.
        every_n_epochs: Evaluate after every n-th training epoch (and always at the end).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers for decoding.
        flip: Test-time flip fusion: ``none``, ``sum`` (raw embeddings added, then L2 norm; InsightFace) or
            ``concat`` (L2-normalised halves concatenated; SphereFace/CosFace). true/false mean sum/none.
        source: Optional generator whose ``ensure()`` creates the data first (the synthetic dataset).
        dirpath: Run directory; curves go to ``<dirpath>/curves/<name>_<kind>.{png,csv}``. None uses the trainer's
            ``default_root_dir``.
        save_curves: Write the curve PNG and CSV files (the TensorBoard figures are logged either way).
        cache: Decode the set once per run and keep it as uint8 (:class:`DecodedImages`) instead of re-reading the
            files at every evaluation; false re-reads them (for sets too large for memory).
    """

    paths: np.ndarray

    def __init__(
        self,
        name: str,
        transform: Transform | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 128,
        num_workers: int = 0,
        flip: bool | str = "none",
        source: DataSource | None = None,
        dirpath: str | None = None,
        save_curves: bool = True,
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
        self.transform = transform
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dirpath = dirpath
        self.save_curves = bool(save_curves)
        self.cache = bool(cache)
        self._decoded: DecodedImages | None = None
        if source is not None:
            source.ensure()
        self.results: dict[str, Any] = {}
        self.report: MetricReport | None = None
        self.embeddings: np.ndarray | None = None
        self._evaluated_at_step: int | None = None

    # --- protocol-specific part -------------------------------------------------------------------------------
    def compute(self, embeddings: np.ndarray) -> MetricReport:
        """All metrics of the protocol from the embeddings of :attr:`paths` (same order)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Evaluation options recorded next to the results."""
        return {"flip": self.flip}

    def artifacts(self, title: str) -> list[Artifact]:
        """Figures and their CSV data for the last evaluation."""
        return []

    # --- evaluation ---------------------------------------------------------------------------------------------
    def images(self) -> np.ndarray | DecodedImages:
        """What :func:`embed_images` reads: the uint8 cache (built on first use) or the file paths."""
        if not self.cache:
            return self.paths
        if self._decoded is None:
            self._decoded = DecodedImages.from_paths(self.paths, self.transform)
        return self._decoded

    def _pack_images(self, decode: Callable[[int], np.ndarray], size: int) -> DecodedImages:
        """Images of an in-memory pack (``.bin``): decoded on first use; kept between evaluations only with ``cache``
        (without it they are decoded again each time, as files would be re-read)."""
        if self._decoded is None:
            self._decoded = DecodedImages(decode, size, self.transform)
        if not self.cache:
            self._decoded.cache.clear()
        return self._decoded

    def embed(self, module: pl.LightningModule | torch.nn.Module, trainer: pl.Trainer | None = None) -> np.ndarray:
        """L2-normalised (flip-fused) embeddings of :attr:`paths` from ``module.embed``, sharded under DDP."""
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
        # Embedded once per evaluation; every metric, figure and CSV of this evaluation reuses these.
        self.embeddings = self.embed(module, trainer)
        report = self.compute(self.embeddings)
        report.options.update(self.options())
        self.report = report
        self.results = report.to_json(f"{self.name}/")
        return self.results

    def scalars(self) -> dict[str, float]:
        """The defined metrics of the last evaluation as ``val/<name>/<metric>`` (undefined ones left out)."""
        return self.report.scalars(f"val/{self.name}/") if self.report is not None else {}

    def curve_dir(self, trainer: pl.Trainer | None = None) -> Path | None:
        """Where curve files go: ``<dirpath>/curves`` (or under the trainer's ``default_root_dir``)."""
        root = self.dirpath if self.dirpath is not None else (trainer.default_root_dir if trainer else None)
        return None if root is None else Path(root) / "curves"

    def write_curves(self, directory: str | os.PathLike[str] | None = None, step: int | None = None) -> list[Path]:
        """Save the last evaluation's curves as ``<name>_<kind>.png`` and ``.csv`` files in ``directory``."""
        directory = Path(directory) if directory is not None else self.curve_dir()
        if directory is None or self.report is None:
            return []
        return self._write(directory, self.artifacts(self._title(step)))

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
        directory = self.curve_dir(trainer)
        if self.save_curves and directory is not None:
            self._write(directory, artifacts)

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


class VerificationCallback(EvaluationCallback):
    """Pair verification (same / not same) with k-fold accuracy, ROC, AUC, EER and TAR@FAR.

    Args:
        score: ``cosine`` or ``l2`` (squared L2 distance of the unit embeddings, same when low; InsightFace).
        mean_subtraction: Subtract the mean embedding of the training folds before scoring (SphereFace); the
            k-fold thresholds then come from per-fold scores and the ROC from out-of-fold scores.
        fars: False-accept rates at which TAR is reported; one below 1 / (impostor pairs) is "undefined".
        threshold_grid: None for the exact threshold search; ``[start, stop, step]`` for a grid (``[0, 4, 0.01]``
            with ``score=l2`` and ``flip=sum`` is InsightFace's protocol).
        **kwargs: See :class:`EvaluationCallback`.
    """

    pairs: PairList

    def __init__(
        self,
        name: str,
        score: str = "cosine",
        mean_subtraction: bool = False,
        fars: Sequence[float] = DEFAULT_FARS,
        threshold_grid: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            greater_is_same_for(score)
            grid = threshold_grid if threshold_grid is None else [float(v) for v in threshold_grid]
            make_threshold_grid(grid)
        except ValueError as error:
            raise ValueError(f"eval.{name}: {error}") from None
        self.score = score
        self.mean_subtraction = bool(mean_subtraction)
        self.fars = _check_fars(name, "fars", fars)
        self.threshold_grid = grid
        super().__init__(name, **kwargs)

    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Score of each pair from the embeddings of :attr:`paths` (same order)."""
        raise NotImplementedError

    def fold_scorer(self, embeddings: np.ndarray) -> FoldScorer:
        """Scores of all pairs with the mean of the training folds subtracted (see ``mean_subtraction``)."""
        raise NotImplementedError

    def compute(self, embeddings: np.ndarray) -> MetricReport:
        scores = self.fold_scorer(embeddings) if self.mean_subtraction else self.pair_scores(embeddings)
        report = verification_report(
            scores,
            self.pairs.issame,
            folds=self.pairs.folds,
            fars=self.fars,
            greater_is_same=greater_is_same_for(self.score),
            thresholds=make_threshold_grid(self.threshold_grid),
        )
        report.options["pairs"] = len(self.pairs)
        return report

    def options(self) -> dict[str, Any]:
        return {**super().options(), "score": self.score, "mean_subtraction": self.mean_subtraction}

    def artifacts(self, title: str) -> list[Artifact]:
        report = self.report
        if report is None:
            return []
        fpr, tpr, thr = report["fpr"], report["tpr"], report["thresholds"]
        keep = subsample_curve(fpr)
        roc = ("roc", roc_figure(fpr[keep], tpr[keep], f"{title} ROC"), {
            "fpr": fpr[keep], "tpr": tpr[keep], "threshold": thr[keep],
        })  # fmt: skip
        scores, issame = report["scores"], report["issame"]
        xlabel = "cosine similarity" if self.score == "cosine" else "squared L2 distance"
        if self.mean_subtraction:
            xlabel += " (mean-subtracted, out-of-fold)"
        fig, columns = score_histogram_figure(
            scores[issame], scores[~issame], report.values.get("threshold"), f"{title} scores", xlabel
        )
        return [roc, ("scores", fig, columns)]


class PairVerification(VerificationCallback):
    """Image-pair verification in the LFW View-2 layout (``root/<Name>/<Name>_<NNNN>.jpg`` + ``pairs.txt``).

    Folds are the 10 consecutive blocks of ``pairs.txt`` in file order. Each image is embedded once even when it
    appears in several pairs.
    """

    def __init__(self, name: str, root: str, pairs_file: str, ext: str = "jpg", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.root = Path(root)
        self.pairs = read_lfw_pairs(pairs_file, ext=ext)
        check_images_exist(self.pairs, self.root)
        unique, inverse = np.unique(np.asarray(self.pairs.left + self.pairs.right), return_inverse=True)
        self.paths = np.asarray([os.path.join(self.root, p) for p in unique])
        n = len(self.pairs)
        self._left, self._right = inverse[:n], inverse[n:]

    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return pair_scores(embeddings[self._left], embeddings[self._right], self.score)

    def fold_scorer(self, embeddings: np.ndarray) -> FoldScorer:
        return mean_subtracted_scorer(embeddings[self._left], embeddings[self._right], self.score)


class BinVerification(VerificationCallback):
    """Pair verification on an InsightFace ``.bin`` pack (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin).

    The pack is loaded with the restricted unpickler of :func:`facetrain.data.binset.load_bin` (a ``.bin`` from the
    internet cannot run code), its images stay encoded until the first evaluation decodes them once into the uint8
    cache. Images ``2i`` and ``2i+1`` form pair ``i``; the 10 folds are consecutive blocks in file order, as in
    InsightFace's ``verification.py``.

    Args:
        name: Metric prefix (``cfp_fp`` gives ``val/cfp_fp/acc``).
        path: The ``.bin`` file.
        n_folds: Consecutive folds in file order (10, as every published number on these packs).
        **kwargs: The options of :class:`VerificationCallback` (flip, score, mean_subtraction, ...).
    """

    def __init__(self, name: str, path: str, n_folds: int = 10, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.binset = load_bin(path)
        n = len(self.binset)
        if not 2 <= n_folds <= n:
            raise ValueError(f"eval.{name}.n_folds must be in [2, {n}] for the {n} pairs of {path}, got {n_folds}")
        self.pairs = PairList(
            left=[f"{path}#{2 * i}" for i in range(n)],
            right=[f"{path}#{2 * i + 1}" for i in range(n)],
            issame=self.binset.issame.astype(bool),
            folds=fold_ids(n, n_folds),
        )
        self.paths = np.asarray([f"{path}#{i}" for i in range(2 * n)])  # names for messages; images come from the pack
        self._left, self._right = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)

    def images(self) -> DecodedImages:
        return self._pack_images(self.binset.decode, 2 * len(self.binset))

    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return pair_scores(embeddings[self._left], embeddings[self._right], self.score)

    def fold_scorer(self, embeddings: np.ndarray) -> FoldScorer:
        return mean_subtracted_scorer(embeddings[self._left], embeddings[self._right], self.score)


class VideoPairVerification(VerificationCallback):
    """Video-pair verification (YouTube Faces): what :class:`VideoVerification` (frame folders) and
    :class:`VideoBinVerification` (a video ``.bin`` pack) share; a subclass supplies the videos.

    How two videos are compared is not standardised (protocols.md §3.3), so it is an option, recorded next to the
    results:

    * ``mean_embedding`` (default, ArcFace): a video is the L2-normalised mean of its L2-normalised frame
      embeddings; pairs are scored like images.
    * ``mean_pair_cosine`` (NormFace): the mean over all frame pairs of the two videos of the frame-pair score. For
      unit frames this is the dot product of the two *un-normalised* frame means (and 2 - 2·that for ``l2``), so
      no frame-by-frame matrix is built.
    * ``first_k`` (FaceNet): ``mean_pair_cosine`` over the first ``k`` frames of each video.

    With ``mean_subtraction`` the mean of the frames of the videos in the training splits is subtracted from every
    frame, which is L2-normalised again before aggregation (NormFace's order).

    Args:
        frames_per_video: Evenly spaced frames used per video; None uses all. Not combinable with ``first_k``.
        aggregate: ``mean_embedding``, ``mean_pair_cosine`` or ``first_k``.
        k: Frames per video for ``first_k`` (FaceNet used 100).
        **kwargs: See :class:`VerificationCallback`.
    """

    def __init__(
        self,
        name: str,
        frames_per_video: int | None = None,
        aggregate: str = "mean_embedding",
        k: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if frames_per_video is not None and frames_per_video < 1:
            raise ValueError(f"eval.{name}.frames_per_video must be >= 1 or null, got {frames_per_video}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"eval.{name}.aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
        if aggregate == "first_k":
            if int(k) != k or k < 1:
                raise ValueError(f"eval.{name}.k must be a positive integer, got {k!r}")
            if frames_per_video is not None:
                raise ValueError(
                    f"eval.{name}: aggregate=first_k takes the first k={k} frames; set frames_per_video=null"
                )
        self.aggregate = aggregate
        self.k = int(k)
        self.frames_per_video = frames_per_video

    @property
    def first_k(self) -> int | None:
        """Frames kept from the start of each video (``first_k`` aggregation), else None."""
        return self.k if self.aggregate == "first_k" else None

    def _index_videos(self, counts: Sequence[int], entry_video: np.ndarray) -> None:
        """Record the frame layout: :attr:`paths` holds ``counts[v]`` consecutive frames per video ``v``, and
        ``entry_video[i]`` / ``entry_video[n + i]`` are the two videos of pair ``i``."""
        self._counts = np.asarray(counts)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self._owner = np.repeat(np.arange(len(self._counts)), self._counts)  # video of each frame (contiguous runs)
        n = len(self.pairs)
        self._left, self._right = entry_video[:n], entry_video[n:]

    def options(self) -> dict[str, Any]:
        options = {**super().options(), "aggregate": self.aggregate}
        if self.aggregate == "first_k":
            options["k"] = self.k
        else:
            options["frames_per_video"] = self.frames_per_video if self.frames_per_video is not None else "all"
        return options

    def video_scores(self, frames: np.ndarray) -> np.ndarray:
        """Score of each video pair from L2-normalised frame embeddings (rows in :attr:`paths` order)."""
        means = np.add.reduceat(frames, self._starts, axis=0) / self._counts[:, None]
        if self.aggregate == "mean_embedding":
            videos = means / np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)
            return pair_scores(videos[self._left], videos[self._right], self.score)
        # Mean over all frame pairs of a·b = (mean of a)·(mean of b); for unit frames |a - b|² = 2 - 2 a·b.
        mean_cos = np.sum(means[self._left] * means[self._right], axis=1)
        return mean_cos if self.score == "cosine" else 2.0 - 2.0 * mean_cos

    def pair_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self.video_scores(embeddings)

    def fold_scorer(self, embeddings: np.ndarray) -> FoldScorer:
        frames = np.asarray(embeddings, dtype=np.float64)

        def scorer(train: np.ndarray) -> np.ndarray:
            videos = np.union1d(self._left[train], self._right[train])
            mu = frames[np.isin(self._owner, videos)].mean(axis=0)
            centred = frames - mu
            return self.video_scores(centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(min=1e-12))

        return scorer


class VideoVerification(VideoPairVerification):
    """Video-pair verification in the YouTube Faces layout (``root/<Name>/<video>/<frames>`` + ``splits.txt``).

    The splits are the folds; scoring options as in :class:`VideoPairVerification`.

    Args:
        root: ``aligned_images_DB``.
        splits_file: The ``splits.txt``.
        n_splits: Splits the file must have (10 for YTF); None accepts any number (small fixtures).
        **kwargs: See :class:`VideoPairVerification`.
    """

    def __init__(self, name: str, root: str, splits_file: str, n_splits: int | None = 10, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.root = Path(root)
        self.pairs = read_ytf_splits(splits_file, n_splits=n_splits)
        videos, inverse = np.unique(np.asarray(self.pairs.left + self.pairs.right), return_inverse=True)
        frames = [list_frames(self.root / v, self.frames_per_video, self.first_k) for v in videos]
        self.paths = np.asarray([p for f in frames for p in f])
        self._index_videos([len(f) for f in frames], inverse)


class VideoBinVerification(VideoPairVerification):
    """Video-pair verification on a video ``.bin`` pack (``ytf.bin`` from ``scripts/pairs_to_bin.py
    --splits-file``), loaded with the restricted unpickler of :func:`facetrain.data.binset.load_video_bin`.

    The folds are consecutive blocks in pair order (how the writer stores the splits); frames stay encoded until
    the first evaluation decodes the used ones once into the uint8 cache. Scores equal :class:`VideoVerification`
    on the frame folders the pack was written from.

    Args:
        path: The ``.bin`` file.
        n_splits: Number of folds (10 for YTF).
        **kwargs: See :class:`VideoPairVerification`.
    """

    def __init__(self, name: str, path: str, n_splits: int = 10, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.videoset = load_video_bin(path)
        n = len(self.videoset)
        if not 2 <= n_splits <= n:
            raise ValueError(f"eval.{name}.n_splits must be in [2, {n}] for the {n} pairs of {path}, got {n_splits}")
        left, right = self.videoset.pair_videos[0::2], self.videoset.pair_videos[1::2]
        self.pairs = PairList(
            left=[f"{path}#video{v}" for v in left],
            right=[f"{path}#video{v}" for v in right],
            issame=self.videoset.issame.astype(bool),
            folds=fold_ids(n, n_splits),
        )
        selected = [select_frames(len(v), self.frames_per_video, self.first_k) for v in self.videoset.videos]
        self._frames = [(v, int(f)) for v, keep in enumerate(selected) for f in keep]
        self.paths = np.asarray([f"{path}#video{v}/frame{f}" for v, f in self._frames])  # names for messages
        self._index_videos([len(keep) for keep in selected], np.concatenate([left, right]))

    def images(self) -> DecodedImages:
        frames = self._frames
        return self._pack_images(lambda i: self.videoset.decode(*frames[i]), len(frames))


class OpenSetIdentification(EvaluationCallback):
    """Open-set identification (DIR@FAR), closed-set rank-1 and all-pairs verification rate over several trials.

    Two protocols:

    * **BLUFR** (``blufr_dir`` set): the trials of BLUFR's text lists ``gallery_set.txt``, ``probe_set.txt`` and
      optionally ``test_set.txt`` (format in :func:`facetrain.evaluation.openset.read_blufr_list`); images are
      ``root/<Name>/<Name>_<NNNN>.jpg`` (LFW). Report DIR@FAR=1% rank 1 and VR@FAR=0.1%, headline mean − std.
    * **generic** (``blufr_dir`` null): any identity-folder tree ``root/<identity>/<image>``; trial t is the seeded
      split :func:`facetrain.evaluation.openset.split_gallery_probe` with seed ``seed + t``: a fraction
      ``impostor_fraction`` of identities is left out of the gallery (impostors), every other identity puts one image
      in the gallery and the rest are genuine probes.

    Every image is embedded once per evaluation; the trials index into those embeddings.

    Args:
        root: Image root (LFW layout for BLUFR, identity folders otherwise).
        blufr_dir: Folder with BLUFR's text lists, or None for the generic protocol.
        trials: Number of generic trials (BLUFR: the number in the lists).
        seed: Seed of the first generic trial.
        impostor_fraction: Fraction of identities held out of the gallery (generic).
        fars: FARs for DIR.
        rank: Rank for DIR.
        ver_far: FAR for the all-pairs verification rate of each trial's test set; null skips it.
        **kwargs: See :class:`EvaluationCallback`.
    """

    def __init__(
        self,
        name: str,
        root: str,
        blufr_dir: str | None = None,
        trials: int = 10,
        seed: int = 0,
        impostor_fraction: float = 0.5,
        fars: Sequence[float] = (0.01,),
        rank: int = 1,
        ver_far: float | None = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.fars = _check_fars(name, "fars", fars)
        if ver_far is not None:
            _check_fars(name, "ver_far", [ver_far])
        if int(rank) != rank or rank < 1:
            raise ValueError(f"eval.{name}.rank must be a positive integer, got {rank!r}")
        self.rank, self.ver_far, self.seed = int(rank), ver_far, int(seed)
        self.impostor_fraction = float(impostor_fraction)
        self.root = Path(root)
        self.blufr_dir = blufr_dir
        if not self.root.is_dir():
            raise FileNotFoundError(f"eval.{name}.root={str(self.root)!r} is not a directory")
        if blufr_dir is not None:
            lists = read_blufr_lists(blufr_dir)
            files = lists.files
            identities = [blufr_identity(f) for f in files]
            self.paths = np.asarray([os.path.join(self.root, i, f) for i, f in zip(identities, files)])
            missing = [p for p in self.paths if not os.path.exists(p)]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(files)} BLUFR images are missing under {self.root}; first: {missing[0]}"
                )
            self.labels = np.asarray(identities)
            self.trials: list[OpenSetTrial] = blufr_trials(lists, files)
        else:
            if int(trials) != trials or trials < 1:
                raise ValueError(f"eval.{name}.trials must be a positive integer, got {trials!r}")
            try:
                _, self.paths, self.labels = scan_identity_folders(self.root)
                self.trials = [
                    split_gallery_probe(self.labels, seed=self.seed + t, impostor_fraction=self.impostor_fraction)
                    for t in range(int(trials))
                ]
            except ValueError as error:
                raise ValueError(f"eval.{name}: {error}") from None

    def compute(self, embeddings: np.ndarray) -> MetricReport:
        return open_set_report(
            embeddings, self.labels, self.trials, fars=self.fars, rank=self.rank, ver_far=self.ver_far
        )

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            **super().options(),
            "protocol": "blufr" if self.blufr_dir is not None else "generic",
            "rank": self.rank,
            "images": len(self.paths),
        }
        if self.blufr_dir is None:
            options.update(seed=self.seed, impostor_fraction=self.impostor_fraction)
        return options

    def artifacts(self, title: str) -> list[Artifact]:
        report = self.report
        if report is None or "dir_far_fars" not in report:
            return []
        fars, mean, std = report["dir_far_fars"], report["dir_far_mean"], report["dir_far_std"]
        fig = dir_far_figure(fars, mean, f"{title} DIR (rank {self.rank})", std=std)
        return [("dir_far", fig, {"far": fars, "dir_mean": mean, "dir_std": std})]
