"""LFW-overlap identity lists: the shipped lists, the user-file format, exclusion and relabelling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facetrain.data.overlap import (
    NAMED_LISTS,
    drop_empty_classes,
    exclude_identities,
    load_identity_list,
    read_identity_list,
)

SPHEREFACE3 = ["0166921", "1056413", "1193098"]  # docs/protocols.md §4.2 [S22]
# docs/protocols.md §4.2 [S24]
LFW16 = ["0000513", "0004763", "0005009", "0005082", "0005172", "0166921", "0208962", "0454042", "0662519",
         "0706787", "0955471", "1056413", "1091782", "1193098", "1303492", "3478560"]  # fmt: skip


def test_shipped_lists_match_the_reference() -> None:
    assert sorted(NAMED_LISTS) == ["lfw16", "sphereface3"]
    sphereface = load_identity_list("sphereface3")
    assert list(sphereface.identities) == SPHEREFACE3 and sphereface.path.is_file()
    lfw16 = load_identity_list("lfw16")
    assert list(lfw16.identities) == LFW16
    assert set(SPHEREFACE3) <= set(lfw16.identities)


def test_user_list_format(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my overlap list\n\n0000045   # Bruce_Lee\n  0000099\n#0000100\n")
    assert read_identity_list(path) == ["0000045", "0000099"]
    listed = load_identity_list(str(path))
    assert listed.spec == str(path) and listed.identities == ("0000045", "0000099")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("0000045\n0000099 0000100\n", 2, "not an identity folder name"),
        ("0000045\nfoo/bar\n", 2, "not an identity folder name"),
        ("a\nb\n\na  # again\n", 4, "listed twice .first at line 1"),
    ],
)
def test_bad_list_lines_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_identity_list(path)
    assert f"{path}:{line}:" in str(info.value)


def test_unknown_name_or_missing_file() -> None:
    with pytest.raises(ValueError, match=r"data.exclude_identities='sphereface' .*lfw16, sphereface3"):
        load_identity_list("sphereface")
    with pytest.raises(ValueError, match="nor an existing file"):
        load_identity_list("/no/such/list.txt")


def test_exclusion_relabels_contiguously_and_reports_missing_ids() -> None:
    classes = ["0000045", "0166921", "0000099", "1193098", "0000100"]
    labels = np.asarray([0, 0, 1, 1, 1, 2, 3, 4, 4])
    ex = exclude_identities(classes, labels, SPHEREFACE3)
    assert ex.classes == ["0000045", "0000099", "0000100"]
    assert ex.keep.tolist() == [0, 1, 5, 7, 8]
    assert ex.labels.tolist() == [0, 0, 1, 2, 2]
    assert ex.removed == [("0166921", 3), ("1193098", 1)]
    assert ex.not_found == ["1056413"]
    none = exclude_identities(classes, labels, [])
    assert none.labels.tolist() == labels.tolist() and none.removed == []
    with pytest.raises(ValueError, match="removes all 2 identities"):
        exclude_identities(["a", "b"], np.asarray([0, 1]), ["a", "b"])


def test_drop_empty_classes() -> None:
    classes, labels, emptied = drop_empty_classes(["a", "b", "c"], np.asarray([0, 2, 2]))
    assert classes == ["a", "c"] and labels.tolist() == [0, 1, 1] and emptied == ["b"]
    classes, labels, emptied = drop_empty_classes(["a", "b"], np.asarray([1, 0]))
    assert classes == ["a", "b"] and labels.tolist() == [1, 0] and emptied == []
