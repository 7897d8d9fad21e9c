"""The one place that calls Hydra's ``instantiate`` (so an allowlist can be added here when Hydra 1.4 lands)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig


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
        objects.append(instantiate(node))
    return objects
