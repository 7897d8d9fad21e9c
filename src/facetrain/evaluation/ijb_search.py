"""IJB-B / IJB-C 1:N mixed-media identification: CMC rank-k and TPIR at FPIR, per gallery and their mean.

Pure NumPy (no torch). Template features come from :func:`facetrain.evaluation.ijb.template_features`.

The protocol (IJB-C: Maze et al., "IARPA Janus Benchmark-C", ICB 2018, §V "1:N identification"; IJB-B: Whitelam
et al., CVPRW 2017; metrics as NIST defines them for 1:N search, Grother, Ngan and Hanaoka, NISTIR 8238, FRVT
Part 2): the probe templates of ``<prefix>_1N_probe_mixed.csv`` are searched against each of two disjoint galleries
(IJB-C ``G1``/``G2``, IJB-B ``S1``/``S2``) **separately**, and each metric is reported per gallery and as the
mean of the two. For one gallery:

* a **mated** search is a probe whose subject has a gallery template; the others are **non-mated** searches
  (the probes of the other gallery's subjects);
* **CMC rank-k** (retrieval rate) is the fraction of mated searches whose mate is among the ``k`` best-scoring
  gallery subjects (ties count against the probe);
* **FPIR(τ)** is the fraction of non-mated searches whose best gallery score is ``>= τ``; **TPIR(τ)** (rank 1)
  is the fraction of mated searches whose mate is at rank 1 *and* scores ``>= τ``. TPIR at a target FPIR uses
  the operating point of BLUFR's ``OpenSetROC.m`` (:func:`facetrain.evaluation.openset.dir_from_scores`):
  τ is the ``round(FPIR · N_non-mated)``-th highest non-mated score. TPIR@FPIR is DIR@FAR at rank 1.

InsightFace's ``ijb_1n.py`` (``recognition/_evaluation_/ijb/``) differs and is not followed: it searches the union
of both galleries, and its "TPIR" thresholds the mated scores against the top ``ceil(FPIR · P)`` of all
non-mate *comparisons* (not of the non-mated searches' best scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from facetrain.evaluation.ijb import template_rows
from facetrain.evaluation.openset import OpenSetScores, dir_from_scores, open_set_scores
from facetrain.evaluation.verification import MetricReport, UndefinedMetricError

__all__ = ["IJB_FPIRS", "IJB_RANKS", "SubjectList", "identification", "search_gallery"]

IJB_RANKS: tuple[int, ...] = (1, 5, 10)
IJB_FPIRS: tuple[float, ...] = (0.01, 0.1)
# (template ids, subject id of each) as read from a 1:N CSV.
SubjectList = tuple[np.ndarray, np.ndarray]


def search_gallery(
    template_ids: np.ndarray, template_features: np.ndarray, gallery: SubjectList, probe: SubjectList
) -> OpenSetScores:
    """Search every probe template in one gallery: mate scores and ranks, and the non-mated searches' best scores.

    Raises:
        ValueError: A listed template has no feature (the message names its row in the list).
    """
    feats = np.asarray(template_features, dtype=np.float64)
    g_rows = template_rows(template_ids, np.asarray(gallery[0]), "gallery template")
    p_rows = template_rows(template_ids, np.asarray(probe[0]), "probe template")
    return open_set_scores(feats[g_rows], np.asarray(gallery[1]), feats[p_rows], np.asarray(probe[1]))


def identification(
    template_ids: np.ndarray,
    template_features: np.ndarray,
    galleries: Mapping[str, SubjectList],
    probe: SubjectList,
    ranks: Sequence[int] = IJB_RANKS,
    fpirs: Sequence[float] = IJB_FPIRS,
) -> MetricReport:
    """IJB 1:N mixed-media identification (see the module docstring for the definitions).

    Args:
        template_ids: Sorted unique template ids (from ``template_features``).
        template_features: ``(T, D)`` unit template features in that order.
        galleries: Gallery name (``G1``, ``G2``; IJB-B ``S1``, ``S2``) → (template ids, subject ids).
        probe: (template ids, subject ids) of the probe templates.
        ranks: CMC ranks.
        fpirs: Target FPIRs.

    Returns:
        Values ``<gallery>/rank<k>``, ``<gallery>/tpir@fpir=<f>``, ``<gallery>/mated`` and
        ``<gallery>/non_mated`` per gallery, and the unprefixed means over galleries of the rank and TPIR values;
        curves ``<gallery>/cmc`` (rank-1..rank-max rates). A TPIR whose FPIR a gallery cannot measure is undefined
        with the reason (then its mean is too).
    """
    if not galleries:
        raise ValueError("1:N identification needs at least one gallery")
    if not ranks or any(int(k) != k or k < 1 for k in ranks):
        raise ValueError(f"ranks must be positive integers, got {list(ranks)!r}")
    report = MetricReport()
    per_key: dict[str, list[float | None]] = {}
    reasons: dict[str, str] = {}
    for name, gallery in galleries.items():
        scores = search_gallery(template_ids, template_features, gallery, probe)
        if scores.genuine_scores.size == 0:
            raise ValueError(f"gallery {name}: no probe subject has a template in it (no mated search)")
        report.set(f"{name}/mated", float(scores.genuine_scores.size))
        report.set(f"{name}/non_mated", float(scores.impostor_scores.size))
        max_rank = max(ranks)
        cmc = np.array([np.mean(scores.genuine_ranks <= k) for k in range(1, max_rank + 1)])
        report.curves[f"{name}/cmc"] = cmc
        for k in ranks:
            per_key.setdefault(f"rank{k}", []).append(float(cmc[k - 1]))
            report.set(f"{name}/rank{k}", float(cmc[k - 1]))
        for fpir in fpirs:
            key = f"tpir@fpir={fpir:g}"
            try:
                value: float | None = dir_from_scores(scores, fpir, rank=1)
                report.set(f"{name}/{key}", value)
            except UndefinedMetricError as error:
                value = None
                reasons.setdefault(key, f"gallery {name}: {error}")
                report.set_undefined(f"{name}/{key}", str(error))
            per_key.setdefault(key, []).append(value)
    for key, values in per_key.items():
        if any(v is None for v in values):
            report.set_undefined(key, reasons[key])
        else:
            report.set(key, float(np.mean(values)))
    return report
