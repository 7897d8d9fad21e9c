"""PathTable: the compact path index (exact round trip, subsets, bad arrays)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from facetrain.data.index import PathTable


def test_round_trip_including_non_ascii_and_chunk_boundaries() -> None:
    names = [f"{i // 7:07d}/{i % 7:03d}.jpg" for i in range(70_000)] + ["Zoë_Ñandú/0001.jpg", ""]
    table = PathTable.from_relative("/data/root", iter(names))
    assert len(table) == len(names)
    for i in (0, 1, 65_535, 65_536, 69_999, 70_000, 70_001, -1):
        assert table.relative(i) == names[i]
    assert table[70_000] == os.path.join("/data/root", "Zoë_Ñandú/0001.jpg")
    assert table.nbytes == sum(len(n.encode()) for n in names) + 8 * (len(names) + 1)
    with pytest.raises(IndexError, match="out of range for 70002 paths"):
        table[70_002]


def test_take_selects_and_reorders() -> None:
    names = ["a/1.jpg", "bb/22.jpg", "ccc/333.jpg", "d/4.png"]
    table = PathTable.from_relative("", names)
    sub = table.take(np.array([3, 0, 2, 2]))
    assert list(sub) == ["d/4.png", "a/1.jpg", "ccc/333.jpg", "ccc/333.jpg"]
    assert len(table.take(np.array([], dtype=np.int64))) == 0


def test_bad_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 data"):
        PathTable("", np.zeros(3, np.int32), np.array([0, 3]))
    with pytest.raises(ValueError, match="start at 0, end at len"):
        PathTable("", np.zeros(3, np.uint8), np.array([0, 2]))
