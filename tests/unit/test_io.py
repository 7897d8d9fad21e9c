"""facetrain.utils.io: the one atomic write every file of the project goes through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facetrain.utils.io import atomic_write, write_json_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    with atomic_write(target, "wb", fsync=True) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"

    def crash_mid_write() -> None:
        with atomic_write(target, "wb") as f:
            f.write(b"half of the sec")
            raise RuntimeError("mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        crash_mid_write()
    assert target.read_bytes() == b"first"  # the old content survives a crash mid-write
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # and no temporary file is left


def test_atomic_write_text_options_permissions_and_bad_modes(tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    with atomic_write(target, "w", encoding="utf-8", newline="") as f:
        f.write("é,1\r\n")
    assert target.read_bytes() == "é,1\r\n".encode()
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as a file written in place, not mkstemp's 0600
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), atomic_write(target, "a"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="text mode"), atomic_write(target, "wb", encoding="utf-8"):
        pass
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [2], "b": 1}


def test_verification_protocol_imports_no_torch() -> None:
    """The protocols take arrays and return reports (the layering rule): importing one must not load torch or cv2."""
    code = "import sys, facetrain.evaluation.verification; print(sorted({'torch', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
