"""TinyFace closed-set identification with distractors: rank-1, rank-5 and rank-20, as AdaFace evaluates it.

TinyFace (Cheng et al., "Low-Resolution Face Recognition", ACCV 2018) tests native low-resolution faces: 3,728 probe
images are searched in a gallery of 4,443 "gallery match" images of the probe identities plus 153,428 distractor
images of other people. AdaFace (Kim et al., CVPR 2022) reports the closed-set CMC at
ranks 1, 5 and 20 with the code in ``validation_lq/tinyface_helper.py`` of github.com/mk-minchul/AdaFace
(``TinyFaceTest.test_identification`` → ``DIR_FAR(score_mat, label_mat, ranks=[1, 5, 20])``, borrowed from
seasonSH/Probabilistic-Face-Embeddings), which this module follows:

* the score is the inner product of the (L2-normalised) probe and gallery features, i.e. the cosine;
* the gallery is the gallery-match images *and* every distractor image (distractor label ``-100``), one column per
  image: ranks count gallery images, not identities;
* only probes with at least one mate in the gallery are scored (``match_indices``; in TinyFace every probe has one);
* a probe succeeds at rank k when a mate is among its k highest-scoring gallery images; the rank-k value is the
  fraction of scored probes that succeed.

One choice is ours: AdaFace orders the gallery with ``np.argsort`` (an unstable sort), so the fate of a probe whose
best mate *ties* a non-mate score is unspecified there; here ties count against the probe (as in
:mod:`facetrain.evaluation.openset`), so a collapsed model with identical embeddings scores 0, not 1. Without exact
ties the two agree to the last digit.

NumPy only: arrays in, a :class:`~facetrain.evaluation.verification.MetricReport` out. The probe × gallery score
matrix of the real set (3,728 × 157,871) is computed in blocks of probes to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facetrain.evaluation.openset import unit_rows
from facetrain.evaluation.verification import MetricReport

__all__ = ["DISTRACTOR_LABEL", "TINYFACE_RANKS", "cmc", "mate_ranks", "tinyface_report"]

#: Ranks AdaFace reports on TinyFace.
TINYFACE_RANKS: tuple[int, ...] = (1, 5, 20)
#: Label of a distractor gallery image (AdaFace ``init_proto``: ``labels_distractor = -100``); matches no probe.
DISTRACTOR_LABEL = -100


def mate_ranks(
    probe_emb: np.ndarray,
    probe_labels: Sequence[int] | np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[int] | np.ndarray,
    block: int = 256,
) -> np.ndarray:
    """1-based rank of each probe's best-scoring mate among all gallery images (0 where it has no mate).

    The rank is 1 + the number of non-mate gallery images scoring at least the best mate's score (ties count
    against the probe). Embeddings are L2-normalised here, so the score is the cosine.

    Args:
        probe_emb: ``(P, D)`` probe embeddings.
        probe_labels: ``(P,)`` identity labels of the probes.
        gallery_emb: ``(G, D)`` gallery embeddings (gallery match and distractors).
        gallery_labels: ``(G,)`` labels; distractors carry :data:`DISTRACTOR_LABEL`.
        block: Probes scored at once (memory ~ ``block × G`` floats).

    Returns:
        ``(P,)`` int64 ranks; 0 marks a probe whose label no gallery image carries.
    """
    probes = unit_rows(probe_emb, "probe embeddings", np.float32)
    gallery = unit_rows(gallery_emb, "gallery embeddings", np.float32)
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    if probe_labels.shape != (probes.shape[0],) or gallery_labels.shape != (gallery.shape[0],):
        raise ValueError(
            f"one label per embedding row: {probe_labels.shape} labels for {probes.shape[0]} probes, "
            f"{gallery_labels.shape} for {gallery.shape[0]} gallery images"
        )
    if probes.shape[1] != gallery.shape[1]:
        raise ValueError(f"embedding widths differ: probes {probes.shape[1]}, gallery {gallery.shape[1]}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    ranks = np.zeros(probes.shape[0], dtype=np.int64)
    for start in range(0, probes.shape[0], block):
        scores = probes[start : start + block] @ gallery.T
        mate = probe_labels[start : start + block, None] == gallery_labels[None, :]
        best = np.where(mate, scores, -np.inf).max(axis=1)
        beaten = ((scores >= best[:, None]) & ~mate).sum(axis=1)
        ranks[start : start + block] = np.where(mate.any(axis=1), beaten + 1, 0)
    return ranks


def cmc(ranks: np.ndarray, at: Sequence[int] = TINYFACE_RANKS) -> dict[int, float]:
    """Cumulative match characteristic: the fraction of ranked probes (rank > 0) with rank <= k, per k.

    Raises:
        ValueError: No probe has a mate in the gallery, or a rank in ``at`` is not a positive integer.
    """
    ranks = np.asarray(ranks)
    scored = ranks[ranks > 0]
    if scored.size == 0:
        raise ValueError("no probe has a mate in the gallery: closed-set identification is undefined")
    for k in at:
        if int(k) != k or k < 1:
            raise ValueError(f"ranks must be positive integers, got {k!r}")
    return {int(k): float(np.mean(scored <= k)) for k in at}


def tinyface_report(
    probe_emb: np.ndarray,
    probe_labels: Sequence[int] | np.ndarray,
    match_emb: np.ndarray,
    match_labels: Sequence[int] | np.ndarray,
    distractor_emb: np.ndarray | None = None,
    ranks: Sequence[int] = TINYFACE_RANKS,
) -> MetricReport:
    """TinyFace closed-set identification against gallery match + distractors.

    Args:
        probe_emb: ``(P, D)`` probe embeddings (any norm; the score is the cosine).
        probe_labels: ``(P,)`` probe identities (``probe_ids`` of ``probe_img_ID_pairs.mat``).
        match_emb: ``(G, D)`` gallery-match embeddings.
        match_labels: ``(G,)`` their identities (``gallery_ids`` of ``gallery_match_img_ID_pairs.mat``).
        distractor_emb: ``(M, D)`` distractor embeddings (``Gallery_Distractor/``), or None for none.
        ranks: Ranks to report.

    Returns:
        Values ``rank<k>`` per k (``rank1``, ``rank5``, ``rank20``); options ``score``, ``probes`` (scored),
        ``probes_without_mate`` (left out, as AdaFace does), ``gallery_match`` and ``distractors``; curve
        ``cmc`` (rank-k for k = 1 .. max(ranks)).
    """
    match_emb = np.asarray(match_emb)
    gallery_labels = np.asarray(match_labels)
    if np.any(gallery_labels == DISTRACTOR_LABEL):
        raise ValueError(f"a gallery-match label equals the distractor label {DISTRACTOR_LABEL}")
    gallery = match_emb
    n_distractors = 0
    if distractor_emb is not None and len(distractor_emb):
        n_distractors = len(distractor_emb)
        gallery = np.concatenate([match_emb, np.asarray(distractor_emb, dtype=match_emb.dtype)])
        gallery_labels = np.concatenate([gallery_labels, np.full(n_distractors, DISTRACTOR_LABEL)])
    found = mate_ranks(probe_emb, probe_labels, gallery, gallery_labels)
    curve = cmc(found, range(1, max(ranks) + 1))
    report = MetricReport(curves={"cmc": np.array([curve[k] for k in sorted(curve)])})
    for k in ranks:
        report.set(f"rank{int(k)}", curve[int(k)])
    report.options.update(
        score="cosine",
        probes=int(np.sum(found > 0)),
        probes_without_mate=int(np.sum(found == 0)),
        gallery_match=len(match_emb),
        distractors=n_distractors,
    )
    return report
