"""A generated dataset directory: written once, atomically, under a lock, and reused while its manifest matches.

:func:`ensure_dataset` is the whole life cycle every synthetic set shares. ``root/manifest.json`` records what the
directory was generated with; while it equals what the caller would write, the directory is reused. Otherwise the
set is written into a temporary sibling and renamed into place, so an interrupted run never leaves a partial set
that looks complete, and an exclusive ``fcntl`` lock on ``<root>.lock`` makes concurrent callers (DDP ranks,
parallel tests) generate it once while the others wait and reuse it. A directory holding anything the set does not
write is never replaced.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "ensure_dataset", "file_lock", "stale_reason"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _changes(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every leaf that differs (nested mappings are compared key by key)."""
    out = []
    for key in [*expected, *(k for k in found if k not in expected)]:
        old, new = found.get(key), expected.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out.extend(_changes(old, new))
        elif old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def stale_reason(root: Path, expected: Mapping[str, Any]) -> str | None:
    """Why the set under ``root`` cannot be reused, or None when its manifest equals ``expected``.

    Args:
        root: The set's directory.
        expected: The manifest the caller would write (it holds a ``format_version``).
    """
    path = root / MANIFEST
    if not root.exists():
        return f"{root} does not exist"
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError) as err:
        return f"{path} is unreadable ({err})"
    if not isinstance(found, dict) or found.get("format_version") != expected["format_version"]:
        version = found.get("format_version") if isinstance(found, dict) else None
        return f"format version changed ({version} -> {expected['format_version']})"
    changed = _changes(found, expected)
    return f"parameters changed ({', '.join(changed)})" if changed else None


def _check_replaceable(root: Path, own_entries: Collection[str]) -> None:
    """Refuses to replace a directory holding anything the set does not write."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"root {root} exists and is not a directory")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in own_entries) if root.exists() else []
    if foreign:
        raise ValueError(
            f"root {root} holds files that are not a synthetic dataset ({', '.join(foreign[:5])}); "
            "refusing to replace it, choose another root or delete it"
        )


def _swap_in(tmp: Path, root: Path) -> None:
    """Atomically puts the finished ``tmp`` tree at ``root``, deleting any previous set there."""
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-old-", dir=root.parent))
    os.replace(root, old / root.name)
    os.replace(tmp, root)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive ``fcntl`` lock on ``path`` (created if needed; left in place to avoid unlink races)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_dataset(
    root: Path, manifest: Mapping[str, Any], own_entries: Collection[str], write: Callable[[Path], int], what: str
) -> int | None:
    """Generates a set under ``root`` unless the one there has this ``manifest``.

    Args:
        root: The set's directory.
        manifest: What ``root/manifest.json`` holds once the set is written (in this key order).
        own_entries: Names of the entries ``write`` creates directly under the set's directory (``manifest.json``
            is added); anything else found under ``root`` stops the replacement.
        write: Writes the set into the directory it is given and returns the number of files written.
        what: The set, in log messages (``synthetic faces``).

    Returns:
        The files written, or None when the set under ``root`` was reused.

    Raises:
        ValueError: If ``root`` holds files that the set does not write (they are never deleted).
    """
    if stale_reason(root, manifest) is None:
        return None
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(Path(f"{root}.lock")):
        reason = stale_reason(root, manifest)
        if reason is None:  # another process generated it while we waited for the lock
            return None
        _check_replaceable(root, {*own_entries, MANIFEST})
        if root.exists():
            logger.warning("Regenerating %s at %s: %s", what, root, reason)
        for leftover in root.parent.glob(f".{root.name}.tmp-*"):  # from crashed runs; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            written = write(tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _swap_in(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return written
