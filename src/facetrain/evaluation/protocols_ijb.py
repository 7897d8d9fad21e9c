"""Protocols of IJB-B / IJB-C (1:1 template verification and 1:N mixed-media search) and TinyFace.

Arrays in, :class:`~facetrain.evaluation.verification.MetricReport` out (NumPy; no torch, no Lightning), as the
protocols of :mod:`facetrain.evaluation.protocols`. The maths lives in :mod:`facetrain.evaluation.ijb`,
:mod:`facetrain.evaluation.ijb_search` and :mod:`facetrain.evaluation.tinyface`; these classes pool, call them on
the rows of a set (:mod:`facetrain.evaluation.sets_ijb`) and name the results.

IJB metric keys (``<name>/`` is prepended by the callback): ``tar@far=<far>`` (InsightFace's nearest-FPR TAR, the
published numbers), ``tar@far=<far>/strict`` (largest TAR with FPR <= far), ``auc``; with the 1:N lists
``<gallery>/rank<k>``, ``<gallery>/tpir@fpir=<f>`` and their means ``mean/rank<k>``, ``mean/tpir@fpir=<f>``. The
first variant of ``variants`` gives the unprefixed keys; every further variant the same keys prefixed
``<variant>/`` (``N0D0/tar@far=0.0001``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from facetrain.evaluation.ijb import IJB_FARS, template_features, verification
from facetrain.evaluation.ijb_search import IJB_FPIRS, IJB_RANKS, identification
from facetrain.evaluation.plots import cmc_figure, roc_figure, subsample_curve
from facetrain.evaluation.protocols import RANKS, Artifact, Protocol
from facetrain.evaluation.sets import EvaluationSet
from facetrain.evaluation.sets_ijb import IjbEvalSet, TinyFaceEvalSet
from facetrain.evaluation.tinyface import TINYFACE_RANKS, tinyface_report
from facetrain.evaluation.verification import MetricReport
from facetrain.utils.rules import FARS, Constraint, OneOf, check_args

__all__ = ["IjbProtocol", "TinyFaceProtocol", "parse_variant"]

_VARIANT = re.compile(r"N([01])D([01])")


def parse_variant(variant: str, name: str = "ijbc") -> tuple[bool, bool]:
    """``N<0|1>D<0|1>`` → (keep the face norm, weigh by the faceness score), the two switches of
    :func:`facetrain.evaluation.ijb.template_features` (InsightFace's ``use_norm_score``, ``use_detector_score``).

    Raises:
        ValueError: Another string (the message names ``eval.<name>.variants``).
    """
    match = _VARIANT.fullmatch(str(variant))
    if match is None:
        raise ValueError(f"eval.{name}.variants: {variant!r} is not one of N1D1, N1D0, N0D1, N0D0")
    return match.group(1) == "1", match.group(2) == "1"


def _merge(report: MetricReport, part: MetricReport, prefix: str) -> None:
    """Add ``part``'s values, reasons and curves to ``report`` with their keys prefixed."""
    for key, value in part.values.items():
        report.set(f"{prefix}{key}", value, part.reasons.get(key))
    report.curves.update({f"{prefix}{key}": curve for key, curve in part.curves.items()})


class IjbProtocol(Protocol):
    """IJB-B / IJB-C: template pooling, 1:1 verification and (``identification``) 1:N search per gallery.

    Args:
        variants: Template pooling variants ``N<0|1>D<0|1>`` (N1 keeps each face's embedding norm, D1 weighs it by
            its faceness score; :mod:`facetrain.evaluation.ijb`), the first one unprefixed. InsightFace's published
            numbers use N1D1 with flip summed.
        fars: Target FARs of the 1:1 TAR (a FAR below 1 / impostor pairs is "undefined").
        ranks: 1:N CMC ranks.
        fpirs: 1:N target FPIRs of TPIR.
        identification: Run the 1:N search (the set must have the probe and gallery lists).
        name: See :class:`~facetrain.evaluation.protocols.Protocol`.
    """

    set_type = IjbEvalSet
    #: Valid values, checked by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "fars": FARS,
        "ranks": RANKS,
        "fpirs": FARS,
        "identification": OneOf((True, False)),
    }

    def __init__(
        self,
        variants: Sequence[str] = ("N1D1",),
        fars: Sequence[float] = IJB_FARS,
        ranks: Sequence[int] = IJB_RANKS,
        fpirs: Sequence[float] = IJB_FPIRS,
        identification: bool = True,
        name: str = "ijbc",
    ) -> None:
        check_args(self, locals(), prefix=f"eval.{name}")
        super().__init__(name)
        if isinstance(variants, str):
            variants = [variants]
        if not variants or len(set(variants)) != len(variants):
            raise ValueError(f"eval.{name}.variants must be distinct N<0|1>D<0|1> names, got {list(variants)!r}")
        self.variants = {str(v): parse_variant(v, name) for v in variants}
        self.fars = tuple(float(f) for f in fars)
        self.ranks = tuple(ranks)
        self.fpirs = tuple(float(f) for f in fpirs)
        self.identification = identification
        # N1 weighs each face by the norm of its (flip-summed) embedding: the callback must keep the norms.
        self.unit_embeddings = not any(keep_norm for keep_norm, _ in self.variants.values())

    def check(self, evalset: EvaluationSet) -> None:
        super().check(evalset)
        assert isinstance(evalset, IjbEvalSet)
        if self.identification and not evalset.has_search:
            prefix = evalset.ijb.prefix if evalset.ijb is not None else "<prefix>"
            raise ValueError(
                f"eval.{self.name}.identification=true needs the 1:N lists meta/{prefix}_1N_probe_mixed.csv and "
                f"the gallery CSVs, which are not in the set; add them or set eval.{self.name}.identification=false"
            )

    def __call__(self, embeddings: np.ndarray, evalset: EvaluationSet) -> MetricReport:
        self.check(evalset)
        assert isinstance(evalset, IjbEvalSet) and evalset.ijb is not None
        ijb = evalset.ijb
        report = MetricReport()
        for i, (variant, (keep_norm, use_faceness)) in enumerate(self.variants.items()):
            ids, feats = template_features(
                embeddings, ijb.templates, ijb.medias, ijb.faceness if use_faceness else None, keep_norm
            )
            part = verification(ids, feats, ijb.pair_t1, ijb.pair_t2, ijb.pair_labels, self.fars)
            if self.identification:
                assert ijb.probe is not None
                search = identification(ids, feats, ijb.galleries, ijb.probe, self.ranks, self.fpirs)
                # identification() leaves the means over galleries unprefixed; they are named mean/ here.
                _merge(part, search, "")
                for key in [k for k in search.values if "/" not in k]:
                    part.set(f"mean/{key}", part.values.pop(key), part.reasons.pop(key, None))
            _merge(report, part, "" if i == 0 else f"{variant}/")
        report.options["variant"] = next(iter(self.variants))
        return report

    def options(self) -> dict[str, Any]:
        return {"variants": list(self.variants), "tar": "nearest FPR (InsightFace); /strict: FPR <= FAR"}

    def artifacts(self, report: MetricReport, title: str) -> list[Artifact]:
        out: list[Artifact] = []
        for i, variant in enumerate(self.variants):
            prefix = "" if i == 0 else f"{variant}/"
            fpr, tpr, thr = report[f"{prefix}fpr"], report[f"{prefix}tpr"], report[f"{prefix}thresholds"]
            keep = subsample_curve(fpr)
            kind = "roc" if i == 0 else f"roc_{variant}"
            fig = roc_figure(fpr[keep], tpr[keep], f"{title} ROC ({variant})")
            out.append((kind, fig, {"fpr": fpr[keep], "tpr": tpr[keep], "threshold": thr[keep]}))
        galleries = {k.split("/")[0]: v for k, v in report.curves.items() if k.count("/") == 1 and k.endswith("/cmc")}
        if galleries:
            ranks = np.arange(1, len(next(iter(galleries.values()))) + 1)
            fig = cmc_figure(galleries, f"{title} 1:N CMC ({next(iter(self.variants))})")
            out.append(("cmc", fig, {"rank": ranks, **galleries}))
        return out


class TinyFaceProtocol(Protocol):
    """TinyFace closed-set identification against gallery match + distractors: rank-k and the CMC curve
    (:func:`facetrain.evaluation.tinyface.tinyface_report`, AdaFace's protocol).

    Args:
        ranks: Ranks reported (AdaFace: 1, 5, 20).
        name: See :class:`~facetrain.evaluation.protocols.Protocol`.
    """

    set_type = TinyFaceEvalSet
    #: Valid values, checked by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {"ranks": RANKS}

    def __init__(self, ranks: Sequence[int] = TINYFACE_RANKS, name: str = "tinyface") -> None:
        check_args(self, locals(), prefix=f"eval.{name}")
        super().__init__(name)
        self.ranks = tuple(ranks)

    def __call__(self, embeddings: np.ndarray, evalset: EvaluationSet) -> MetricReport:
        self.check(evalset)
        assert isinstance(evalset, TinyFaceEvalSet)
        p, g, labels = evalset.probes, evalset.probes + evalset.matches, evalset.labels
        return tinyface_report(
            embeddings[:p], labels[:p], embeddings[p:g], labels[p:g], embeddings[g:], ranks=self.ranks
        )

    def options(self) -> dict[str, Any]:
        return {"ranks": list(self.ranks)}

    def artifacts(self, report: MetricReport, title: str) -> list[Artifact]:
        rates = report["cmc"]
        fig = cmc_figure({"cmc": rates}, f"{title} CMC")
        return [("cmc", fig, {"rank": np.arange(1, len(rates) + 1), "rate": rates})]
