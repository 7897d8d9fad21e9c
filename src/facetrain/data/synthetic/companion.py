"""What the companion evaluation sets (IJB-C- and TinyFace-format) share: their manifest and :meth:`ensure`.

A companion set is a frozen dataclass whose fields other than ``root`` and ``workers`` determine its files; it is
generated on first use by its evaluation set (``eval.<set>.source``), never by a run that does not evaluate it.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

from facetrain.data.synthetic.store import ensure_dataset

__all__ = ["FORMAT_VERSION", "CompanionSet"]

logger = logging.getLogger(__name__)

# Bump whenever the rendering or the layout changes, so existing sets are regenerated instead of reused.
FORMAT_VERSION = 1
# The manifest's generator names the module that wrote format 1 (a new name would regenerate every existing set).
_GENERATOR_MODULE = "facetrain.data.synthetic_ijb"


class CompanionSet:
    """Base of the companion sets: subclasses are frozen dataclasses with ``root`` and ``workers`` fields.

    Attributes:
        own_entries: The entries the set writes directly under ``root`` (anything else stops a replacement).
    """

    root: Path
    workers: int
    own_entries: ClassVar[frozenset[str]] = frozenset()

    def params(self) -> dict[str, Any]:
        """Fields that determine the generated files (everything except ``root`` and ``workers``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("root", "workers")}  # type: ignore[arg-type]

    def _manifest(self) -> dict[str, Any]:
        generator = f"{_GENERATOR_MODULE}.{type(self).__name__}"
        return {"generator": generator, "format_version": FORMAT_VERSION, **self.params()}

    def ensure(self) -> CompanionSet:
        """Generates the set under ``root`` unless the same one is there (locked and atomic, as SyntheticFaces)."""
        name = type(self).__name__
        written = ensure_dataset(Path(self.root), self._manifest(), self.own_entries, self._write, name)
        if written is not None:
            logger.info("Generated %s at %s: %d images", name, self.root, written)
        return self

    def _write(self, base: Path) -> int:
        """Writes the set under ``base``; returns the number of images."""
        raise NotImplementedError
