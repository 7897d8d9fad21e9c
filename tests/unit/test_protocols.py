"""LFW pairs.txt and YTF splits.txt readers/writers: round trips, fold layout and located error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facetrain.data.protocols import (
    PairList,
    check_images_exist,
    read_lfw_pairs,
    read_ytf_splits,
    write_lfw_pairs,
    write_ytf_splits,
)

# Two folds of two matched + two mismatched pairs; line numbers below refer to this layout:
# 1 header | 2-3 fold 0 matched | 4-5 fold 0 mismatched | 6-7 fold 1 matched | 8-9 fold 1 mismatched
LFW_FOLDS = [
    ([("Abel_Pacheco", 1, 4), ("Ann_Lee", 2, 3)], [("Abel_Pacheco", 1, "Dean_Barker", 1), ("Ann_Lee", 3, "Bo_Yu", 12)]),
    ([("Cy_Ro", 1, 2), ("Di_Ko", 5, 10)], [("Cy_Ro", 1, "Ed_Mo", 2), ("Di_Ko", 4, "Fa_No", 1)]),
]
YTF_ROWS = [
    (1, 1, "Sadie_Frost/1", "Sadie_Frost/5", 1),
    (1, 2, "Ann_Lee/0", "Ann_Lee/2", 1),
    (1, 3, "Sadie_Frost/1", "Bo_Yu/0", 0),
    (1, 4, "Ann_Lee/2", "Bo_Yu/1", 0),
    (2, 1, "Cy_Ro/0", "Cy_Ro/1", 1),
    (2, 2, "Cy_Ro/0", "Di_Ko/3", 0),
]


def _lfw_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "pairs.txt"
    write_lfw_pairs(path, LFW_FOLDS)
    return path.read_text().splitlines()


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_located(excinfo: pytest.ExceptionInfo[ValueError], path: Path, line: int) -> None:
    message = str(excinfo.value)
    assert f"{path.name}:{line}:" in message, message


# ---------------------------------------------------------------------------------------------------------------
# LFW
# ---------------------------------------------------------------------------------------------------------------


def test_lfw_writer_produces_official_layout(tmp_path: Path) -> None:
    _lfw_lines(tmp_path)
    raw = (tmp_path / "pairs.txt").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().split("\n")[:-1]
    assert lines[0] == "2\t2"
    assert lines[1] == "Abel_Pacheco\t1\t4"
    assert lines[3] == "Abel_Pacheco\t1\tDean_Barker\t1"
    assert [len(line.split("\t")) for line in lines[1:]] == [3, 3, 4, 4, 3, 3, 4, 4]


def test_lfw_round_trip_paths_labels_and_folds(tmp_path: Path) -> None:
    _lfw_lines(tmp_path)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 8
    assert pairs.left[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs.right[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pairs.right[3] == "Bo_Yu/Bo_Yu_0012.jpg"
    assert pairs.right[7] == "Fa_No/Fa_No_0001.jpg"
    np.testing.assert_array_equal(pairs.issame, [True, True, False, False] * 2)
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    assert pairs.issame.dtype == bool
    assert pairs.n_folds == 2


def test_lfw_extension_and_whitespace_tolerance(tmp_path: Path) -> None:
    lines = _lfw_lines(tmp_path)
    lines[0] = "2   2"  # header separated by spaces
    lines[1] = "Abel_Pacheco 1 4"
    pairs = read_lfw_pairs(_write(tmp_path, "spaces.txt", lines), ext="png")
    assert pairs.left[0] == "Abel_Pacheco/Abel_Pacheco_0001.png"


@pytest.mark.parametrize(
    ("line_no", "replacement", "expected_line", "fragment"),
    [
        (0, "2", 1, "header"),  # header with one field
        (0, "two\t2", 1, "integers"),
        (0, "Abel_Pacheco\t1\t4", 1, "header"),  # header-less copy
        (2, "Ann_Lee\t2", 3, "matched"),  # wrong field count in the matched block
        (2, "Ann_Lee\t2\tBo_Yu\t3", 3, "matched"),  # mismatched line where a matched one belongs
        (4, "Ann_Lee\t3\t5", 5, "mismatched"),  # matched line where a mismatched one belongs
        (6, "Cy_Ro\tone\t2", 7, "integer"),
        (8, "Di_Ko\t4\tFa_No\t1.5", 9, "integer"),
        (1, "Abel_Pacheco\t0\t4", 2, ">= 1"),
        (5, "Cy_Ro\t3\t3", 6, "same image"),
    ],
)
def test_lfw_malformed_line_is_located(
    tmp_path: Path, line_no: int, replacement: str, expected_line: int, fragment: str
) -> None:
    lines = _lfw_lines(tmp_path)
    lines[line_no] = replacement
    path = _write(tmp_path, "bad_pairs.txt", lines)
    with pytest.raises(ValueError, match=fragment) as excinfo:
        read_lfw_pairs(path)
    _assert_located(excinfo, path, expected_line)


def test_lfw_missing_lines_reported_at_end_of_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "short.txt", _lfw_lines(tmp_path)[:-1])
    with pytest.raises(ValueError, match="wrong line count") as excinfo:
        read_lfw_pairs(path)
    _assert_located(excinfo, path, 9)


def test_lfw_extra_lines_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "long.txt", [*_lfw_lines(tmp_path), "Zed_Zo\t1\t2"])
    with pytest.raises(ValueError, match="wrong line count") as excinfo:
        read_lfw_pairs(path)
    _assert_located(excinfo, path, 10)


def test_lfw_blank_line_inside_is_an_error(tmp_path: Path) -> None:
    lines = _lfw_lines(tmp_path)
    lines.insert(3, "")
    path = _write(tmp_path, "blank.txt", lines)
    with pytest.raises(ValueError, match="mismatched pair") as excinfo:
        read_lfw_pairs(path)
    _assert_located(excinfo, path, 4)


def test_lfw_empty_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty") as excinfo:
        read_lfw_pairs(empty)
    assert "empty.txt" in str(excinfo.value)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_lfw_pairs(tmp_path / "nope.txt")


def test_lfw_writer_rejects_unbalanced_folds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fold 1"):
        write_lfw_pairs(tmp_path / "p.txt", [LFW_FOLDS[0], (LFW_FOLDS[1][0][:1], LFW_FOLDS[1][1])])
    assert not (tmp_path / "p.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# check_images_exist
# ---------------------------------------------------------------------------------------------------------------


def test_check_images_exist_names_first_missing_and_count(tmp_path: Path) -> None:
    pairs = PairList(
        left=["A/A_0001.jpg", "A/A_0001.jpg", "B/B_0001.jpg"],
        right=["A/A_0002.jpg", "C/C_0001.jpg", "D/D_0001.jpg"],
        issame=np.array([True, False, False]),
        folds=np.zeros(3, dtype=int),
    )
    for rel in ("A/A_0001.jpg", "A/A_0002.jpg", "B/B_0001.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as excinfo:
        check_images_exist(pairs, tmp_path)
    message = str(excinfo.value)
    assert "C/C_0001.jpg" in message and "pair 1" in message and message.startswith("2 of 5 ")
    for rel in ("C/C_0001.jpg", "D/D_0001.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    check_images_exist(pairs, tmp_path)


def test_pairlist_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        PairList(["a"], ["b", "c"], np.array([True]), np.array([0]))


# ---------------------------------------------------------------------------------------------------------------
# YTF
# ---------------------------------------------------------------------------------------------------------------


def _ytf_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "splits.txt"
    write_ytf_splits(path, YTF_ROWS)
    return path.read_text().splitlines()


def test_ytf_writer_produces_official_layout(tmp_path: Path) -> None:
    lines = _ytf_lines(tmp_path)
    assert lines[0] == "split number, pair number, first name, second name, is same"
    assert lines[1] == "1, 1, Sadie_Frost/1, Sadie_Frost/5, 1"
    assert len(lines) == 1 + len(YTF_ROWS)
    assert b"\r" not in (tmp_path / "splits.txt").read_bytes()


def test_ytf_round_trip(tmp_path: Path) -> None:
    _ytf_lines(tmp_path)
    pairs = read_ytf_splits(tmp_path / "splits.txt")
    assert pairs.left == [r[2] for r in YTF_ROWS]
    assert pairs.right == [r[3] for r in YTF_ROWS]
    np.testing.assert_array_equal(pairs.issame, [True, True, False, False, True, False])
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1])


def test_ytf_tolerates_booleans_and_missing_spaces(tmp_path: Path) -> None:
    lines = _ytf_lines(tmp_path)
    lines[1] = "1,1,Sadie_Frost/1,Sadie_Frost/5,True"
    lines[3] = "1, 3, Sadie_Frost/1, Bo_Yu/0, False"
    pairs = read_ytf_splits(_write(tmp_path, "bool.txt", lines))
    assert pairs.issame[0] and not pairs.issame[2]


@pytest.mark.parametrize(
    ("line_no", "replacement", "expected_line", "fragment"),
    [
        (2, "1, 2, Ann_Lee/0, Ann_Lee/2", 3, "5 comma-separated"),
        (3, "1, 3, Sadie_Frost/1, Bo_Yu/0, 2", 4, "'same'"),
        (4, "1, x, Ann_Lee/2, Bo_Yu/1, 0", 5, "integers"),
        (5, "3, 1, Cy_Ro/0, Cy_Ro/1, 1", 6, "expected split 1 or 2"),  # split 2 skipped
        (1, "2, 1, Sadie_Frost/1, Sadie_Frost/5, 1", 2, "expected split 1"),  # does not start at 1
        (4, "1, 2, Ann_Lee/2, Bo_Yu/1, 0", 5, "increase"),  # duplicate pair number
        (6, "2, 2, Cy_Ro, Di_Ko/3, 0", 7, "Name/<video number>"),
    ],
)
def test_ytf_malformed_line_is_located(
    tmp_path: Path, line_no: int, replacement: str, expected_line: int, fragment: str
) -> None:
    lines = _ytf_lines(tmp_path)
    lines[line_no] = replacement
    path = _write(tmp_path, "bad_splits.txt", lines)
    with pytest.raises(ValueError, match=fragment) as excinfo:
        read_ytf_splits(path)
    _assert_located(excinfo, path, expected_line)


def test_ytf_wrong_number_of_splits_names_the_last_line(tmp_path: Path) -> None:
    lines = _ytf_lines(tmp_path)
    path = _write(tmp_path, "two_splits.txt", lines)
    assert read_ytf_splits(path, n_splits=2).folds.max() == 1
    with pytest.raises(ValueError, match="expected 10 splits, the file ends after split 2") as excinfo:
        read_ytf_splits(path, n_splits=10)
    _assert_located(excinfo, path, len(lines))


def test_ytf_headerless_copy_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "noheader.txt", _ytf_lines(tmp_path)[1:])
    with pytest.raises(ValueError, match="header") as excinfo:
        read_ytf_splits(path)
    _assert_located(excinfo, path, 1)


def test_ytf_header_only_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "header_only.txt", _ytf_lines(tmp_path)[:1])
    with pytest.raises(ValueError, match="data rows") as excinfo:
        read_ytf_splits(path)
    _assert_located(excinfo, path, 2)
    with pytest.raises(FileNotFoundError, match="missing_splits.txt"):
        read_ytf_splits(tmp_path / "missing_splits.txt")


def test_writers_leave_no_temp_files(tmp_path: Path) -> None:
    write_lfw_pairs(tmp_path / "pairs.txt", LFW_FOLDS)
    write_ytf_splits(tmp_path / "splits.txt", YTF_ROWS)
    write_ytf_splits(tmp_path / "splits.txt", YTF_ROWS[:2])  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.txt", "splits.txt"]
    assert len(read_ytf_splits(tmp_path / "splits.txt")) == 2
