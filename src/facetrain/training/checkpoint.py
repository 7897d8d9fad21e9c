"""Checkpoints that survive crashes and cannot run code: atomic writes, safe loads, ``ckpt_path=last``.

* :class:`SafeCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes a temporary file in the target directory,
  fsyncs it and renames it over the target (:func:`facetrain.utils.io.atomic_write`), so a crash mid-write leaves
  the previous file intact (Lightning's default stages the file in the system temp directory and *moves* it, which
  is a copy when ``/tmp`` is another file system). It loads with ``torch.load(weights_only=True)``: a checkpoint
  that smuggles a pickled object is refused with :class:`UnsafeCheckpointError` before anything in it runs.
* :func:`find_last_checkpoint` resolves ``ckpt_path=last``: the newest loadable checkpoint among earlier runs of the
  same experiment (same command-line overrides), skipping truncated or unreadable files with a warning.

The callback that writes a checkpoint on SIGTERM/SIGINT is :class:`facetrain.callbacks.preemption.Preemption`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

# Defined without Lightning so that inference code can load checkpoints through the same check.
from facetrain.utils.io import atomic_write
from facetrain.utils.safe_load import UnsafeCheckpointError, safe_load

log = logging.getLogger(__name__)

__all__ = [
    "SafeCheckpointIO",
    "UnsafeCheckpointError",
    "find_last_checkpoint",
    "safe_load",
]


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, fsynced checkpoint writes and weights-only loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"SafeCheckpointIO does not take storage_options, got {storage_options!r}")
        # fsync: a checkpoint is what a preempted or crashed run resumes from, so it must survive a power loss too.
        with atomic_write(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        del weights_only  # always True: facetrain checkpoints are plain data
        return safe_load(path, map_location=map_location if map_location is not None else "cpu")


def _overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    import yaml  # PyYAML ships with Hydra/OmegaConf

    values = yaml.safe_load(path.read_text()) or []
    return sorted(str(v) for v in values if not str(v).startswith(("ckpt_path=", "hydra.")))


def find_last_checkpoint(
    search_root: str | os.PathLike[str], overrides: Sequence[str] | None, exclude: str | os.PathLike[str] | None = None
) -> Path | None:
    """Newest loadable ``*.ckpt`` among runs under ``search_root`` made with the same overrides.

    Args:
        search_root: Directory holding the task's run directories (``logs/train``), searched recursively for Hydra
            run directories (those with ``.hydra/overrides.yaml``).
        overrides: This run's command-line overrides; ``ckpt_path=`` and ``hydra.`` entries are ignored on both sides.
            None matches every run.
        exclude: A run directory not to consider (the current, just created one).

    Returns:
        The newest checkpoint by modification time that loads safely, or None when there is none. Truncated,
        unreadable or unsafe files are skipped with a warning naming them.
    """
    root = Path(search_root)
    wanted = None if overrides is None else sorted(o for o in overrides if not o.startswith(("ckpt_path=", "hydra.")))
    skip = Path(exclude).resolve() if exclude is not None else None
    candidates: list[Path] = []
    for marker in root.glob("**/.hydra/overrides.yaml"):
        run_dir = marker.parent.parent
        if skip is not None and run_dir.resolve() == skip:
            continue
        if wanted is not None and _overrides(run_dir) != wanted:
            continue
        candidates.extend(p for p in run_dir.glob("**/*.ckpt") if p.is_file())
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            safe_load(path)
        except (ValueError, OSError) as err:
            log.warning("ckpt_path=last: skipping %s (%s)", path, err)
            continue
        return path
    return None
