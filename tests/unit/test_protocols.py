"""LFW pairs.txt and YTF splits.txt readers/writers: round trips, fold layout and located error messages."""

from __future__ import annotations

import logging
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
    (2, 3, "Di_Ko/3", "Di_Ko/4", 1),
    (2, 4, "Cy_Ro/1", "Ann_Lee/0", 0),
]  # every split the same size, half same: what read_ytf_splits checks


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
    np.testing.assert_array_equal(pairs.issame, [True, True, False, False, True, False, True, False])
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1, 1, 1])


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
    write_ytf_splits(tmp_path / "splits.txt", [(1, *row[1:]) for row in YTF_ROWS[4:6]])  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.txt", "splits.txt"]
    assert len(read_ytf_splits(tmp_path / "splits.txt")) == 2


# ---------------------------------------------------------------------------------------------------------------
# Copies as they circulate: no header, CRLF, byte-order mark, a row missing
# ---------------------------------------------------------------------------------------------------------------


def _official_lfw_folds() -> list[tuple[list, list]]:
    """The official View-2 shape: 10 folds of 300 matched + 300 mismatched pairs (6,000 lines)."""
    return [
        (
            [(f"M{k}_{i}", 1, 2) for i in range(300)],
            [(f"A{k}_{i}", 1, f"B{k}_{i}", 2) for i in range(300)],
        )
        for k in range(10)
    ]


def _official_ytf_rows() -> list[tuple[int, int, str, str, int]]:
    """The official shape: 10 splits of 500 pairs, 250 same then 250 different."""
    return [
        (split, pair, f"P{split}_{pair}/0", f"{'P' if pair <= 250 else 'Q'}{split}_{pair}/1", int(pair <= 250))
        for split in range(1, 11)
        for pair in range(1, 501)
    ]


def _copy(path: Path, name: str, *, header: bool = True, crlf: bool = False, bom: bool = False) -> Path:
    """A copy of a protocol file as people download it: maybe without its header, with CRLF, with a BOM."""
    lines = path.read_text().splitlines()[(0 if header else 1) :]
    text = ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")
    out = path.parent / name
    out.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return out


def _same_pairs(a: PairList, b: PairList) -> None:
    assert a.left == b.left and a.right == b.right
    np.testing.assert_array_equal(a.issame, b.issame)
    np.testing.assert_array_equal(a.folds, b.folds)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(("crlf", "bom"), [(False, False), (True, False), (False, True), (True, True)])
def test_lfw_headerless_official_copy_is_inferred(tmp_path: Path, caplog, crlf: bool, bom: bool) -> None:
    official = tmp_path / "pairs.txt"
    write_lfw_pairs(official, _official_lfw_folds())
    expected = read_lfw_pairs(official)
    copy = _copy(official, "copy.txt", header=False, crlf=crlf, bom=bom)
    with caplog.at_level(logging.WARNING, logger="facetrain.data.protocols"):
        pairs = read_lfw_pairs(copy)
    _same_pairs(pairs, expected)
    assert len(pairs) == 6000 and pairs.n_folds == 10
    (message,) = _warnings(caplog)  # one line, saying what was inferred
    assert "copy.txt has no header line" in message and "10 folds x (300 matched + 300 mismatched)" in message


def test_lfw_headerless_small_copy_and_crlf_bom_with_header(tmp_path: Path, caplog) -> None:
    _lfw_lines(tmp_path)
    expected = read_lfw_pairs(tmp_path / "pairs.txt")
    with caplog.at_level(logging.WARNING, logger="facetrain.data.protocols"):
        _same_pairs(read_lfw_pairs(_copy(tmp_path / "pairs.txt", "both.txt", crlf=True, bom=True)), expected)
    assert _warnings(caplog) == []  # a header was there: nothing inferred
    _same_pairs(read_lfw_pairs(_copy(tmp_path / "pairs.txt", "noheader.txt", header=False)), expected)


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (lambda lines: lines[:-1], 1),  # a row missing: no longer whole folds
        (lambda lines: lines[:4], 1),  # one fold: nothing confirms where it ends
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], 1),  # a mismatched line among the matched
    ],
)
def test_lfw_headerless_ambiguous_copy_keeps_the_error(tmp_path: Path, edit, line: int) -> None:
    lines = _lfw_lines(tmp_path)[1:]
    path = _write(tmp_path, "ambiguous.txt", edit(lines))
    with pytest.raises(ValueError, match="lack its header line.*cannot be inferred") as excinfo:
        read_lfw_pairs(path)
    _assert_located(excinfo, path, line)


def test_lfw_headerless_official_copy_with_a_row_missing_is_refused(tmp_path: Path) -> None:
    official = tmp_path / "pairs.txt"
    write_lfw_pairs(official, _official_lfw_folds())
    lines = _copy(official, "copy.txt", header=False).read_text().splitlines()
    del lines[4321]
    with pytest.raises(ValueError, match="cannot be inferred") as excinfo:
        read_lfw_pairs(_write(tmp_path, "short.txt", lines))
    assert "short.txt:1:" in str(excinfo.value)


@pytest.mark.parametrize(("crlf", "bom"), [(False, False), (True, False), (False, True), (True, True)])
def test_ytf_headerless_copy_is_read_with_a_warning(tmp_path: Path, caplog, crlf: bool, bom: bool) -> None:
    _ytf_lines(tmp_path)
    expected = read_ytf_splits(tmp_path / "splits.txt")
    copy = _copy(tmp_path / "splits.txt", "copy.txt", header=False, crlf=crlf, bom=bom)
    with caplog.at_level(logging.WARNING, logger="facetrain.data.protocols"):
        _same_pairs(read_ytf_splits(copy, n_splits=2), expected)
    (message,) = _warnings(caplog)
    assert "copy.txt has no header line" in message and "2 splits of 4 pairs" in message
    _same_pairs(read_ytf_splits(_copy(tmp_path / "splits.txt", "h.txt", crlf=crlf, bom=bom)), expected)


def test_ytf_headerless_official_copy_with_bom_keeps_its_first_row(tmp_path: Path) -> None:
    # The case found in the wild: a BOM glued to the first split number made the first row pass for a header
    # (4,999 pairs, split 1 with 499, no error).
    official = tmp_path / "splits.txt"
    write_ytf_splits(official, _official_ytf_rows())
    pairs = read_ytf_splits(_copy(official, "bom.txt", header=False, crlf=True, bom=True), n_splits=10)
    assert len(pairs) == 5000 and np.bincount(pairs.folds).tolist() == [500] * 10
    assert pairs.left[0] == "P1_1/0" and int(pairs.issame.sum()) == 2500
    _same_pairs(pairs, read_ytf_splits(official, n_splits=10))


@pytest.mark.parametrize("header", [True, False])
def test_ytf_missing_row_is_located(tmp_path: Path, header: bool) -> None:
    official = tmp_path / "splits.txt"
    write_ytf_splits(official, _official_ytf_rows())
    lines = _copy(official, "copy.txt", header=header).read_text().splitlines()
    offset = 1 if header else 0
    # A row deleted inside split 3 (pair 137): named where the pair numbers jump.
    middle = [line for i, line in enumerate(lines) if i != offset + 2 * 500 + 136]
    path = _write(tmp_path, "middle.txt", middle)
    with pytest.raises(
        ValueError, match=r"jump from 136 to 138 .* split 3 has 499 pairs \(249 same, 250 different\)"
    ) as excinfo:
        read_ytf_splits(path, n_splits=10)
    _assert_located(excinfo, path, offset + 2 * 500 + 137)
    # The last row of split 5 deleted: named where split 5 ends.
    end = [line for i, line in enumerate(lines) if i != offset + 5 * 500 - 1]
    path = _write(tmp_path, "end.txt", end)
    with pytest.raises(
        ValueError, match=r"split 5 ends here with 499 pairs \(250 same, 249 different\).*has 500"
    ) as excinfo:
        read_ytf_splits(path, n_splits=10)
    _assert_located(excinfo, path, offset + 5 * 500 - 1)


def test_ytf_unbalanced_split_is_refused(tmp_path: Path) -> None:
    lines = _ytf_lines(tmp_path)
    lines[3] = "1, 3, Sadie_Frost/1, Sadie_Frost/5, 1"  # split 1: 3 same, 1 different
    path = _write(tmp_path, "unbalanced.txt", lines)
    with pytest.raises(ValueError, match=r"split 1 ends here with 4 pairs \(3 same, 1 different\)") as excinfo:
        read_ytf_splits(path)
    _assert_located(excinfo, path, 5)


def test_ytf_malformed_first_row_of_a_headerless_copy_is_located(tmp_path: Path) -> None:
    lines = _ytf_lines(tmp_path)[1:]
    lines[0] = "1, 1, Sadie_Frost/1, Sadie_Frost/5"  # starts with a split number: a row, not a header
    path = _write(tmp_path, "bad_first.txt", lines)
    with pytest.raises(ValueError, match="5 comma-separated") as excinfo:
        read_ytf_splits(path)
    _assert_located(excinfo, path, 1)


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    lines = _lfw_lines(tmp_path)
    path = tmp_path / "latin1.txt"
    path.write_bytes("\n".join(lines[:3]).encode() + "\nJos\u00e9\t1\t2\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8") as excinfo:
        read_lfw_pairs(path)
    _assert_located(excinfo, path, 4)
