"""Small file helpers shared by the package: atomic writes and writable-directory checks."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

# A temporary file is ``.<name>.<random>.tmp`` beside its target: hidden, matched by no reader's ``*.<ext>`` glob, and
# on the target's file system so that the final rename is atomic.
_TEMP_ATTEMPTS = 100


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file next to ``path`` and return its descriptor and path.

    Unlike ``tempfile.mkstemp`` (mode 0600), the file is created with mode 0666 less the umask, so the renamed
    result has the permissions of a file written in place.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path} after {_TEMP_ATTEMPTS} attempts")


def _fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so that a rename into it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: Literal["w", "wb"] = "w",
    *,
    fsync: bool = False,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing and rename it over ``path`` when the block succeeds.

    Readers see the old file or the new one, never half of one (``os.replace`` is atomic on POSIX). If the block
    raises, the temporary file is removed and ``path`` is left as it was. Parent directories are created.

    Args:
        path: The file to write.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        fsync: Also flush the file to disk before the rename and the directory after it, so that the new content
            survives a power loss (checkpoints); without it the write is atomic but may be lost in a crash.
        encoding: Text encoding (text mode only); ``None`` is the locale's, as with ``open``.
        newline: Newline translation (text mode only), as with ``open`` (``""`` for the ``csv`` module).

    Yields:
        The open temporary file.

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``, or ``encoding``/``newline`` is given in binary mode.
    """
    # Checked before the temporary file exists: a failing ``os.fdopen`` would leak its descriptor.
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "wb" and (encoding is not None or newline is not None):
        raise ValueError("atomic_write: encoding and newline apply to text mode ('w') only")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and prove it is writable, naming ``what`` in the error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(f"{what}={str(path)!r} is not a writable directory: {error}") from error
    return path
