"""The one place that calls Hydra's ``instantiate`` (so an allowlist can be added here when Hydra 1.4 lands)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

_EVAL_ENTRIES = (
    "PairVerification",
    "BinVerification",
    "VideoVerification",
    "VideoBinVerification",
    "OpenSetIdentification",
    "IjbEvaluation",
    "TinyFaceIdentification",
)

#: ``_target_`` paths that moved when every Lightning callback got one home, ``facetrain.callbacks`` (issue 13), with
#: their new place. No checkpoint is instantiated from these (evaluation and export rebuild only the backbone, which
#: did not move, and a resumed run builds its callbacks from the current configs), so only a config written by hand or
#: copied from an old run's ``.hydra/config.yaml`` can name one; it is refused with the new path.
MOVED_TARGETS: dict[str, str] = {
    "facetrain.evaluation.callback.Evaluation": "facetrain.callbacks.evaluation.Evaluation",
    "facetrain.evaluation.callbacks.Evaluation": "facetrain.callbacks.evaluation.Evaluation",
    "facetrain.evaluation.callbacks.EvaluationCallback": "facetrain.callbacks.evaluation.Evaluation",
    **{f"facetrain.evaluation.callbacks.{n}": f"facetrain.callbacks.eval_sets.{n}" for n in _EVAL_ENTRIES},
    "facetrain.evaluation.head_curves.HeadCurves": "facetrain.callbacks.head_curves.HeadCurves",
    "facetrain.training.checkpoint.Preemption": "facetrain.callbacks.preemption.Preemption",
    "facetrain.training.progress.ProgressBarValues": "facetrain.callbacks.progress.ProgressBarValues",
    "facetrain.training.host_sync.HostReadsPerStep": "facetrain.callbacks.host_reads.HostReadsPerStep",
}


def moved_target(key: str, target: str) -> str | None:
    """The refusal message for a ``_target_`` in :data:`MOVED_TARGETS` (``key`` is its config path), else None."""
    new = MOVED_TARGETS.get(target)
    if new is None:
        return None
    return f"{key}._target_={target!r} has moved: write _target_: {new}"


def instantiate(config: Any, **kwargs: Any) -> Any:
    """Build the object described by a ``_target_`` config node; keyword arguments override config values."""
    return hydra.utils.instantiate(config, **kwargs)


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` entry of a name → config mapping (``callbacks``, ``logger``, ``eval``).

    Entries set to null are skipped, so ``callbacks.model_checkpoint=null`` switches one off.
    """
    if not group:
        return []
    objects = []
    for name, node in group.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"config entry {name!r} must be a mapping with a _target_, got {node!r}")
        moved = moved_target(str(name), str(node["_target_"]))
        if moved is not None:
            raise ValueError(moved)
        objects.append(instantiate(node))
    return objects
