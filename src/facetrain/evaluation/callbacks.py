"""The ``eval/`` config entries: one :class:`~facetrain.evaluation.callback.Evaluation` per on-disk format.

Each class here is only the flat, documented config surface of one format (``eval.lfw.root``, ``eval.lfw.score``,
``eval.ytf.aggregate``, ...): it builds the protocol (options checked first), then hands the format's loader
(``facetrain.evaluation.sets``) and the protocol (``facetrain.evaluation.protocols``) to the one callback. No logic
lives here. A new set needs no class: ``_target_: facetrain.evaluation.callback.Evaluation`` with a ``set`` node
(a loader with ``_partial_: true``) and a ``protocol`` node.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from facetrain.evaluation import sets, sets_ijb
from facetrain.evaluation.callback import Evaluation, tensorboard_writers
from facetrain.evaluation.ijb import IJB_FARS
from facetrain.evaluation.ijb_search import IJB_FPIRS, IJB_RANKS
from facetrain.evaluation.protocols import AGGREGATES, OpenSetProtocol, PairProtocol, VideoPairProtocol
from facetrain.evaluation.protocols_ijb import IjbProtocol, TinyFaceProtocol
from facetrain.evaluation.tinyface import TINYFACE_RANKS
from facetrain.evaluation.verification import DEFAULT_FARS

__all__ = [
    "AGGREGATES",
    "BinVerification",
    "Evaluation",
    "EvaluationCallback",
    "IjbEvaluation",
    "OpenSetIdentification",
    "PairVerification",
    "TinyFaceIdentification",
    "VideoBinVerification",
    "VideoVerification",
    "tensorboard_writers",
]

EvaluationCallback = Evaluation  # the name before the set/protocol split


class PairVerification(Evaluation):
    """LFW View-2 pair verification: :func:`~facetrain.evaluation.sets.lfw_pairs` +
    :class:`~facetrain.evaluation.protocols.PairProtocol`.

    Args:
        name: Metric prefix.
        root: Image root (``<root>/<Name>/<Name>_<NNNN>.<ext>``).
        pairs_file: The ``pairs.txt``.
        ext: Image file extension.
        score, mean_subtraction, fars, threshold_grid: See :class:`~facetrain.evaluation.protocols.PairProtocol`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation` (flip, transform, schedule, outputs).
    """

    def __init__(
        self,
        name: str,
        root: str,
        pairs_file: str,
        ext: str = "jpg",
        score: str = "cosine",
        mean_subtraction: bool = False,
        fars: Sequence[float] = DEFAULT_FARS,
        threshold_grid: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        protocol = PairProtocol(score, mean_subtraction, fars, threshold_grid, name=name)
        loader = partial(sets.lfw_pairs, root, pairs_file, ext=ext, name=name)
        super().__init__(name, loader, protocol, **kwargs)


class BinVerification(Evaluation):
    """Pair verification on an InsightFace ``.bin`` pack: :func:`~facetrain.evaluation.sets.insightface_bin` +
    :class:`~facetrain.evaluation.protocols.PairProtocol`.

    Args:
        name: Metric prefix (``cfp_fp`` gives ``val/cfp_fp/acc``).
        path: The ``.bin`` file.
        n_folds: Consecutive folds in file order (10, as every published number on these packs).
        score, mean_subtraction, fars, threshold_grid: See :class:`~facetrain.evaluation.protocols.PairProtocol`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation`.
    """

    def __init__(
        self,
        name: str,
        path: str,
        n_folds: int = 10,
        score: str = "cosine",
        mean_subtraction: bool = False,
        fars: Sequence[float] = DEFAULT_FARS,
        threshold_grid: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        protocol = PairProtocol(score, mean_subtraction, fars, threshold_grid, name=name)
        super().__init__(name, partial(sets.insightface_bin, path, n_folds, name=name), protocol, **kwargs)


class VideoVerification(Evaluation):
    """YouTube Faces video-pair verification on frame folders: :func:`~facetrain.evaluation.sets.ytf_folders` +
    :class:`~facetrain.evaluation.protocols.VideoPairProtocol`.

    Args:
        name: Metric prefix.
        root: ``aligned_images_DB``.
        splits_file: The ``splits.txt``.
        n_splits: Splits the file must have (10 for YTF); None accepts any number (small fixtures).
        frames_per_video: Evenly spaced frames used per video; None uses all. Not combinable with ``first_k``.
        aggregate, k, score, mean_subtraction, fars, threshold_grid: See
            :class:`~facetrain.evaluation.protocols.VideoPairProtocol`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation`.
    """

    def __init__(
        self,
        name: str,
        root: str,
        splits_file: str,
        n_splits: int | None = 10,
        frames_per_video: int | None = None,
        aggregate: str = "mean_embedding",
        k: int = 100,
        score: str = "cosine",
        mean_subtraction: bool = False,
        fars: Sequence[float] = DEFAULT_FARS,
        threshold_grid: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        protocol = VideoPairProtocol(aggregate, k, score=score, mean_subtraction=mean_subtraction, fars=fars,
                                     threshold_grid=threshold_grid, name=name)  # fmt: skip
        loader = partial(sets.ytf_folders, root, splits_file, n_splits, frames_per_video, protocol.first_k, name=name)
        super().__init__(name, loader, protocol, **kwargs)


class VideoBinVerification(Evaluation):
    """Video-pair verification on a video ``.bin`` pack: :func:`~facetrain.evaluation.sets.ytf_bin` +
    :class:`~facetrain.evaluation.protocols.VideoPairProtocol`; the scores equal :class:`VideoVerification` on the
    frame folders the pack was written from.

    Args:
        name: Metric prefix.
        path: The ``.bin`` file.
        n_splits: Number of folds (10 for YTF).
        frames_per_video, aggregate, k, score, mean_subtraction, fars, threshold_grid: As for
            :class:`VideoVerification`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation`.
    """

    def __init__(
        self,
        name: str,
        path: str,
        n_splits: int = 10,
        frames_per_video: int | None = None,
        aggregate: str = "mean_embedding",
        k: int = 100,
        score: str = "cosine",
        mean_subtraction: bool = False,
        fars: Sequence[float] = DEFAULT_FARS,
        threshold_grid: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        protocol = VideoPairProtocol(aggregate, k, score=score, mean_subtraction=mean_subtraction, fars=fars,
                                     threshold_grid=threshold_grid, name=name)  # fmt: skip
        loader = partial(sets.ytf_bin, path, n_splits, frames_per_video, protocol.first_k, name=name)
        super().__init__(name, loader, protocol, **kwargs)


class OpenSetIdentification(Evaluation):
    """Open-set identification over trials: :func:`~facetrain.evaluation.sets.blufr_lists` (``blufr_dir`` set) or
    :func:`~facetrain.evaluation.sets.identity_folders` (generic seeded trials) +
    :class:`~facetrain.evaluation.protocols.OpenSetProtocol`.

    Args:
        name: Metric prefix.
        root: Image root (LFW layout for BLUFR, identity folders otherwise).
        blufr_dir: Folder with BLUFR's text lists, or None for the generic protocol.
        trials: Number of generic trials (BLUFR: the number in the lists).
        seed: Seed of the first generic trial.
        impostor_fraction: Fraction of identities held out of the gallery (generic).
        fars, rank, ver_far: See :class:`~facetrain.evaluation.protocols.OpenSetProtocol`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation`.
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
        protocol = OpenSetProtocol(fars, rank, ver_far, name=name)
        if blufr_dir is not None:
            loader = partial(sets.blufr_lists, root, blufr_dir, name=name)
        else:
            loader = partial(sets.identity_folders, root, trials, seed, impostor_fraction, name=name)
        super().__init__(name, loader, protocol, **kwargs)


class IjbEvaluation(Evaluation):
    """IJB-B / IJB-C in InsightFace's packaging: :func:`~facetrain.evaluation.sets_ijb.ijb` (loose crops aligned
    from their landmarks) + :class:`~facetrain.evaluation.protocols_ijb.IjbProtocol`.

    Args:
        name: Metric prefix (``ijbc`` gives ``val/ijbc/tar@far=0.0001``).
        root: The set's folder (``loose_crop/``, ``meta/``).
        prefix: File prefix, ``ijbc`` or ``ijbb``.
        galleries: 1:N galleries (IJB-C ``G1, G2``; IJB-B ``S1, S2``).
        variants, fars, ranks, fpirs, identification: See :class:`~facetrain.evaluation.protocols_ijb.IjbProtocol`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation`.
    """

    def __init__(
        self,
        name: str,
        root: str,
        prefix: str = "ijbc",
        galleries: Sequence[str] = ("G1", "G2"),
        variants: Sequence[str] = ("N1D1",),
        fars: Sequence[float] = IJB_FARS,
        ranks: Sequence[int] = IJB_RANKS,
        fpirs: Sequence[float] = IJB_FPIRS,
        identification: bool = True,
        **kwargs: Any,
    ) -> None:
        protocol = IjbProtocol(variants, fars, ranks, fpirs, identification, name=name)
        super().__init__(name, partial(sets_ijb.ijb, root, prefix, tuple(galleries), name=name), protocol, **kwargs)


class TinyFaceIdentification(Evaluation):
    """TinyFace closed-set identification: :func:`~facetrain.evaluation.sets_ijb.tinyface` (images resized to
    112×112) + :class:`~facetrain.evaluation.protocols_ijb.TinyFaceProtocol`.

    Args:
        name: Metric prefix.
        root: The ``tinyface`` folder holding ``Testing_Set/``.
        image_root: Folder of ``Probe/``, ``Gallery_Match/``, ``Gallery_Distractor/`` (AdaFace's aligned copy);
            None reads them from ``<root>/Testing_Set``.
        ranks: See :class:`~facetrain.evaluation.protocols_ijb.TinyFaceProtocol`.
        **kwargs: See :class:`~facetrain.evaluation.callback.Evaluation`.
    """

    def __init__(
        self,
        name: str,
        root: str,
        image_root: str | None = None,
        ranks: Sequence[int] = TINYFACE_RANKS,
        **kwargs: Any,
    ) -> None:
        protocol = TinyFaceProtocol(ranks, name=name)
        super().__init__(name, partial(sets_ijb.tinyface, root, image_root, name=name), protocol, **kwargs)
