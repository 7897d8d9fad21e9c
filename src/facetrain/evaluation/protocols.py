"""Evaluation protocols: a report (metrics and curves) from the embeddings of an evaluation set.

Arrays in, :class:`~facetrain.evaluation.verification.MetricReport` out; no torch, no Lightning. A protocol is called
with the L2-normalised embedding rows of a set (``facetrain.evaluation.sets``) and the set itself, whose lists index
those rows. :meth:`Protocol.artifacts` turns a report into the figures and CSV columns the callback logs and writes.

* :class:`PairProtocol`: pair verification with k-fold accuracy, ROC, AUC, EER and TAR@FAR
  (``facetrain.evaluation.verification``; LFW View-2, docs/protocols.md §2.3).
* :class:`VideoPairProtocol`: video verification = frame aggregation + pair verification
  (YTF, docs/protocols.md §3.3).
* :class:`OpenSetProtocol`: open-set identification, DIR@FAR, rank-1 and VR@FAR over trials
  (``facetrain.evaluation.openset``; BLUFR, docs/protocols.md §2.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from matplotlib.figure import Figure

from facetrain.evaluation.openset import open_set_report
from facetrain.evaluation.plots import dir_far_figure, roc_figure, score_histogram_figure, subsample_curve
from facetrain.evaluation.sets import EvaluationSet, IdentificationSet, PairSet, VideoPairSet
from facetrain.evaluation.verification import (
    DEFAULT_FARS,
    SCORES,
    FoldScorer,
    MetricReport,
    greater_is_same_for,
    mean_subtracted_scorer,
    pair_scores,
    verification_report,
)
from facetrain.evaluation.verification import threshold_grid as make_threshold_grid
from facetrain.utils.rules import FARS, Constraint, Each, Interval, OneOf, check_args

__all__ = ["AGGREGATES", "RANKS", "Artifact", "OpenSetProtocol", "PairProtocol", "Protocol", "VideoPairProtocol"]

Artifact = tuple[str, Figure, dict[str, np.ndarray]]  # (kind, figure, CSV columns)

# YTF video-to-video scores (docs/protocols.md §3.3): ArcFace's mean embedding, NormFace's mean of all frame-pair
# cosines, FaceNet's mean frame-pair similarity over the first k frames.
AGGREGATES = ("mean_embedding", "mean_pair_cosine", "first_k")


#: CMC / identification ranks: a non-empty list of integers >= 1.
RANKS = Each(Interval(1, integer=True), min_len=1)


def _l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


class Protocol:
    """A report from embeddings; options are checked when the protocol is built (before any file is read).

    A protocol declares the valid values of its options once, in ``config_constraints`` (rules of
    :mod:`facetrain.utils.schema`); its constructor enforces them with ``check_args(self, locals(),
    prefix=f"eval.{name}")``, so the message names the config key (``eval.lfw.fars=[0.0] is invalid: ...``), and the
    evaluation callback that is the config ``_target_`` can expose the same declaration to ``validate_config``.

    Args:
        name: The evaluation's metric prefix, for messages (``eval.<name>.<key>``).
    """

    set_type: type[EvaluationSet] = EvaluationSet
    #: The callback hands L2-normalised embeddings; False: the raw flip-fused ones (a protocol that uses the norm).
    unit_embeddings: bool = True

    def __init__(self, name: str = "eval") -> None:
        self.name = name

    def check(self, evalset: EvaluationSet) -> None:
        """Refuse a set this protocol cannot score (called when the evaluation is built)."""
        if not isinstance(evalset, self.set_type):
            wanted, got = self.set_type.__name__, type(evalset).__name__
            raise TypeError(f"eval.{self.name}: {type(self).__name__} needs a {wanted}, got {got}")

    def __call__(self, embeddings: np.ndarray, evalset: EvaluationSet) -> MetricReport:
        """All metrics and curves from the L2-normalised embeddings of ``evalset.paths`` (same row order)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Protocol options recorded next to the results."""
        return {}

    def artifacts(self, report: MetricReport, title: str) -> list[Artifact]:
        """Figures and their CSV columns for a report of this protocol."""
        return []


class PairProtocol(Protocol):
    """Pair verification (same / not same): k-fold accuracy over the set's folds, ROC, AUC, EER and TAR@FAR.

    Args:
        score: ``cosine`` or ``l2`` (squared L2 distance of the unit embeddings, same when low; InsightFace).
        mean_subtraction: Subtract the mean embedding of the training folds before scoring (SphereFace); the
            k-fold thresholds then come from per-fold scores and the ROC from out-of-fold scores.
        fars: False-accept rates at which TAR is reported; one below 1 / (impostor pairs) is "undefined".
        threshold_grid: None for the exact threshold search; ``[start, stop, step]`` for a grid (``[0, 4, 0.01]``
            with ``score=l2`` and ``flip=sum`` is InsightFace's protocol).
        name: See :class:`Protocol`.
    """

    set_type = PairSet
    #: Valid values, checked by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "score": OneOf(SCORES),
        "mean_subtraction": OneOf((True, False)),
        "fars": FARS,
    }

    def __init__(
        self,
        score: str = "cosine",
        mean_subtraction: bool = False,
        fars: Sequence[float] = DEFAULT_FARS,
        threshold_grid: Sequence[float] | None = None,
        name: str = "eval",
    ) -> None:
        check_args(self, locals(), prefix=f"eval.{name}")
        super().__init__(name)
        try:
            grid = threshold_grid if threshold_grid is None else [float(v) for v in threshold_grid]
            make_threshold_grid(grid)
        except ValueError as error:
            raise ValueError(f"eval.{name}: {error}") from None
        self.score = score
        self.mean_subtraction = mean_subtraction
        self.fars = tuple(float(f) for f in fars)
        self.threshold_grid = grid

    def pair_scores(self, embeddings: np.ndarray, evalset: PairSet) -> np.ndarray:
        """Score of each pair of ``evalset`` from its embeddings."""
        return pair_scores(embeddings[evalset.left], embeddings[evalset.right], self.score)

    def fold_scorer(self, embeddings: np.ndarray, evalset: PairSet) -> FoldScorer:
        """Scores of all pairs with the mean of the training folds subtracted (see ``mean_subtraction``)."""
        return mean_subtracted_scorer(embeddings[evalset.left], embeddings[evalset.right], self.score)

    def __call__(self, embeddings: np.ndarray, evalset: EvaluationSet) -> MetricReport:
        self.check(evalset)
        assert isinstance(evalset, PairSet)  # for type checkers: check() refused anything else
        score = self.fold_scorer if self.mean_subtraction else self.pair_scores
        scores = score(embeddings, evalset)
        report = verification_report(
            scores,
            evalset.pairs.issame,
            folds=evalset.pairs.folds,
            fars=self.fars,
            greater_is_same=greater_is_same_for(self.score),
            thresholds=make_threshold_grid(self.threshold_grid),
        )
        report.options["pairs"] = len(evalset.pairs)
        return report

    def options(self) -> dict[str, Any]:
        return {"score": self.score, "mean_subtraction": self.mean_subtraction}

    def artifacts(self, report: MetricReport, title: str) -> list[Artifact]:
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


class VideoPairProtocol(PairProtocol):
    """Video-pair verification (YouTube Faces): frame embeddings aggregated per video, then pair verification.

    How two videos are compared is not standardised (docs/protocols.md §3.3), so it is an option, recorded next to the
    results:

    * ``mean_embedding`` (default, ArcFace): a video is the L2-normalised mean of its L2-normalised frame
      embeddings; pairs are scored like images.
    * ``mean_pair_cosine`` (NormFace): the mean over all frame pairs of the two videos of the frame-pair score. For
      unit frames this is the dot product of the two *un-normalised* frame means (and 2 - 2·that for ``l2``), so
      no frame-by-frame matrix is built.
    * ``first_k`` (FaceNet): ``mean_pair_cosine`` over the first ``k`` frames of each video (the set keeps only
      those: its ``first_k`` must equal ``k``).

    With ``mean_subtraction`` the mean of the frames of the videos in the training splits is subtracted from every
    frame, which is L2-normalised again before aggregation (NormFace's order).

    Args:
        aggregate: ``mean_embedding``, ``mean_pair_cosine`` or ``first_k``.
        k: Frames per video for ``first_k`` (FaceNet used 100).
        **kwargs: See :class:`PairProtocol`.
    """

    set_type = VideoPairSet
    #: Valid values, checked by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **PairProtocol.config_constraints,
        "aggregate": OneOf(AGGREGATES),
        "k": Interval(1, integer=True),
    }

    def __init__(self, aggregate: str = "mean_embedding", k: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_args(self, {"aggregate": aggregate, "k": k}, prefix=f"eval.{self.name}")
        self.aggregate = aggregate
        self.k = k

    @property
    def first_k(self) -> int | None:
        """Frames the set must keep from the start of each video (``first_k`` aggregation), else None."""
        return self.k if self.aggregate == "first_k" else None

    def check(self, evalset: EvaluationSet) -> None:
        super().check(evalset)
        assert isinstance(evalset, VideoPairSet)
        if evalset.first_k != self.first_k:
            raise ValueError(
                f"eval.{self.name}: aggregate={self.aggregate} needs a set loaded with first_k={self.first_k}, "
                f"got first_k={evalset.first_k}"
            )

    def video_scores(self, frames: np.ndarray, evalset: VideoPairSet) -> np.ndarray:
        """Score of each video pair from L2-normalised frame embeddings (rows in ``evalset.paths`` order)."""
        counts = evalset.frame_counts
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        means = np.add.reduceat(frames, starts, axis=0) / counts[:, None]
        if self.aggregate == "mean_embedding":
            return pair_scores(*(_l2_normalize_rows(means[s]) for s in (evalset.left, evalset.right)), self.score)
        # Mean over all frame pairs of a·b = (mean of a)·(mean of b); for unit frames |a - b|² = 2 - 2 a·b.
        mean_cos = np.sum(means[evalset.left] * means[evalset.right], axis=1)
        return mean_cos if self.score == "cosine" else 2.0 - 2.0 * mean_cos

    def pair_scores(self, embeddings: np.ndarray, evalset: PairSet) -> np.ndarray:
        assert isinstance(evalset, VideoPairSet)
        return self.video_scores(embeddings, evalset)

    def fold_scorer(self, embeddings: np.ndarray, evalset: PairSet) -> FoldScorer:
        assert isinstance(evalset, VideoPairSet)
        frames = np.asarray(embeddings, dtype=np.float64)
        owner = np.repeat(np.arange(len(evalset.frame_counts)), evalset.frame_counts)  # video of each frame row

        def scorer(train: np.ndarray) -> np.ndarray:
            videos = np.union1d(evalset.left[train], evalset.right[train])
            mu = frames[np.isin(owner, videos)].mean(axis=0)
            return self.video_scores(_l2_normalize_rows(frames - mu), evalset)

        return scorer

    def options(self) -> dict[str, Any]:
        options = {**super().options(), "aggregate": self.aggregate}
        if self.aggregate == "first_k":
            options["k"] = self.k
        return options


class OpenSetProtocol(Protocol):
    """Open-set identification over the set's trials: DIR@FAR, closed-set rank-1 and the all-pairs VR@FAR.

    Every image is embedded once per evaluation; the trials index into those embeddings
    (:func:`facetrain.evaluation.openset.open_set_report`).

    Args:
        fars: FARs for DIR.
        rank: Rank for DIR.
        ver_far: FAR for the all-pairs verification rate of each trial's test set; None skips it.
        name: See :class:`Protocol`.
    """

    set_type = IdentificationSet
    #: Valid values, checked by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "fars": FARS,
        "rank": Interval(1, integer=True),
        "ver_far": Interval(0.0, 1.0, low_open=True, allow_none=True),
    }

    def __init__(
        self, fars: Sequence[float] = (0.01,), rank: int = 1, ver_far: float | None = 1e-3, name: str = "eval"
    ) -> None:
        check_args(self, locals(), prefix=f"eval.{name}")
        super().__init__(name)
        self.fars = tuple(float(f) for f in fars)
        self.rank, self.ver_far = rank, ver_far

    def __call__(self, embeddings: np.ndarray, evalset: EvaluationSet) -> MetricReport:
        self.check(evalset)
        assert isinstance(evalset, IdentificationSet)
        return open_set_report(
            embeddings, evalset.labels, evalset.trials, fars=self.fars, rank=self.rank, ver_far=self.ver_far
        )

    def options(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def artifacts(self, report: MetricReport, title: str) -> list[Artifact]:
        if "dir_far_fars" not in report:
            return []
        fars, mean, std = report["dir_far_fars"], report["dir_far_mean"], report["dir_far_std"]
        fig = dir_far_figure(fars, mean, f"{title} DIR (rank {self.rank})", std=std)
        return [("dir_far", fig, {"far": fars, "dir_mean": mean, "dir_std": std})]
