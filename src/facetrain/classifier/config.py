"""Config-time checks that the configured classifier layout can hold the head and work with the optimizer (before any
data is read)."""

from __future__ import annotations

import pydoc
from collections.abc import Mapping
from typing import Any

from facetrain.utils.rules import ConfigError

__all__ = ["check_classifier_head"]


def check_classifier_head(
    classifier: Mapping[str, Any] | None, loss: Mapping[str, Any] | None, optimizer: Mapping[str, Any] | None = None
) -> None:
    """Refuses a ``loss`` head or an ``optimizer`` that the ``classifier`` layout cannot work with, naming the keys.

    The layout's target may define ``check_targets(head_cls, optimizer_cls, values) -> str | None``
    (:meth:`~facetrain.classifier.sharded.ShardedClassifier.check_targets`, ``values`` being the classifier node's
    keys); the replicated layout accepts anything.

    Raises:
        ConfigError: The layout refuses the combination.
    """
    if not classifier or "_target_" not in classifier:
        return
    check = getattr(pydoc.locate(str(classifier["_target_"])), "check_targets", None)
    if not callable(check):
        return
    head = pydoc.locate(str(loss["_target_"])) if loss and "_target_" in loss else None
    opt = pydoc.locate(str(optimizer["_target_"])) if optimizer and "_target_" in optimizer else None
    values = {k: classifier[k] for k in classifier if isinstance(k, str) and not k.startswith("_")}
    problem = check(head, opt, values)
    if problem:
        raise ConfigError(problem)
