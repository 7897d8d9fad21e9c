"""IJB readers on fixtures written here in InsightFace's layout, their error messages, and the aligned crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facetrain.data import ijb as ijb_data
from facetrain.data.align import align_face
from facetrain.data.decode import read_rgb
from facetrain.data.ijb import aligned_face, aligned_faces, read_ijb, read_pair_file, read_subject_csv

# Five landmarks (x, y) in a 150×150 loose crop: roughly a frontal face.
LANDMARKS = np.array([[55.0, 65.0], [95.0, 64.0], [75.0, 88.0], [60.0, 110.0], [92.0, 109.0]])
# image, template, media: templates 10 and 11 (one still + a 2-frame video), 20 (one still), 30 (two stills).
FACES = [("1.jpg", 10, 100), ("2.jpg", 10, 101), ("3.jpg", 10, 101), ("4.jpg", 20, 200), ("5.jpg", 30, 300),
         ("6.jpg", 30, 301), ("7.jpg", 11, 110)]  # fmt: skip
PAIRS = [(10, 20, 0), (10, 11, 1), (20, 30, 0), (11, 30, 0)]
HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"


def _write_set(root: Path, prefix: str = "ijbc", galleries: tuple[str, str] = ("G1", "G2")) -> Path:
    (root / "loose_crop").mkdir(parents=True)
    meta = root / "meta"
    meta.mkdir()
    rng = np.random.default_rng(0)
    for name, *_ in FACES:
        cv2.imwrite(str(root / "loose_crop" / name), rng.integers(0, 255, size=(150, 150, 3), dtype=np.uint8))
    (meta / f"{prefix}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in FACES))
    points = " ".join(f"{v:.3f}" for v in LANDMARKS.ravel())
    (meta / f"{prefix}_name_5pts_score.txt").write_text(
        "".join(f"{n} {points} {0.5 + i / 10:.2f}\n" for i, (n, *_) in enumerate(FACES))
    )
    (meta / f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {y}\n" for a, b, y in PAIRS))
    (meta / f"{prefix}_1N_gallery_{galleries[0]}.csv").write_text(HEADER + "10,1,img/1.jpg,1\n10,1,img/2.jpg,1\n")
    (meta / f"{prefix}_1N_gallery_{galleries[1]}.csv").write_text(HEADER + "20,2,img/4.jpg,1\n")
    (meta / f"{prefix}_1N_probe_mixed.csv").write_text(HEADER + "11,1,a.jpg,1\n30,3,b.jpg,1\n30,3,c.jpg,2\n")
    return meta


def test_reads_the_official_layout(tmp_path: Path) -> None:
    _write_set(tmp_path, "ijbb", ("S1", "S2"))
    s = read_ijb(tmp_path, prefix="ijbb", galleries=("S1", "S2"))
    assert s.images == [f[0] for f in FACES]
    assert s.templates.tolist() == [f[1] for f in FACES] and s.medias.tolist() == [f[2] for f in FACES]
    assert s.landmarks.shape == (7, 5, 2) and s.landmarks.dtype == np.float32
    np.testing.assert_allclose(s.landmarks[3], LANDMARKS, atol=1e-3)
    np.testing.assert_allclose(s.faceness, [0.5 + i / 10 for i in range(7)], atol=1e-6)
    assert s.pair_t1.tolist() == [10, 10, 20, 11] and s.pair_t2.tolist() == [20, 11, 30, 30]
    assert s.pair_labels.tolist() == [0, 1, 0, 0]
    assert sorted(s.galleries) == ["S1", "S2"]
    assert s.galleries["S1"][0].tolist() == [10] and s.galleries["S1"][1].tolist() == [1]
    assert s.probe is not None and s.probe[0].tolist() == [11, 30] and s.probe[1].tolist() == [1, 3]
    assert s.path(0) == tmp_path / "loose_crop" / "1.jpg"


def test_one_to_n_lists_are_optional(tmp_path: Path) -> None:
    meta = _write_set(tmp_path)
    (meta / "ijbc_1N_probe_mixed.csv").unlink()
    s = read_ijb(tmp_path)
    assert s.galleries == {} and s.probe is None


def test_aligned_faces_reuse_align(tmp_path: Path) -> None:
    _write_set(tmp_path)
    s = read_ijb(tmp_path)
    crops = list(aligned_faces(s, [3, 0]))
    assert [c.shape for c in crops] == [(112, 112, 3), (112, 112, 3)] and crops[0].dtype == np.uint8
    expected = align_face(read_rgb(tmp_path / "loose_crop" / "4.jpg"), s.landmarks[3], "112x112")
    np.testing.assert_array_equal(crops[0], expected)
    np.testing.assert_array_equal(aligned_face(s, 0), crops[1])


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    meta = _write_set(tmp_path)
    pairs = meta / "ijbc_template_pair_label.txt"
    _replace_line(pairs, 3, "20 99 0")
    with pytest.raises(ValueError, match=r"ijbc_template_pair_label.txt:3: template 99 is not in ijbc_face_tid_mid"):
        read_ijb(tmp_path)
    _replace_line(pairs, 3, "20 30 0")

    (tmp_path / "loose_crop" / "5.jpg").unlink()
    with pytest.raises(ValueError, match=r"ijbc_face_tid_mid.txt:5: image '5.jpg' is not in"):
        read_ijb(tmp_path)
    cv2.imwrite(str(tmp_path / "loose_crop" / "5.jpg"), np.zeros((150, 150, 3), np.uint8))

    marks = meta / "ijbc_name_5pts_score.txt"
    good = marks.read_text().splitlines()[1]
    _replace_line(marks, 2, good.rsplit(" ", 2)[0] + " 0.9")  # one landmark value missing
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt:2: expected an image name, 10 landmark values"):
        read_ijb(tmp_path)
    _replace_line(marks, 2, good.rsplit(" ", 1)[0] + " high")
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt:2: the faceness score 'high' is not a number"):
        read_ijb(tmp_path)
    _replace_line(marks, 2, good)

    gallery = meta / "ijbc_1N_gallery_G2.csv"
    gallery.write_text("TEMPLATE,SUBJECT\n20,2\n")
    with pytest.raises(
        ValueError, match=r"ijbc_1N_gallery_G2.csv:1: expected a header starting 'TEMPLATE_ID,SUBJECT_ID'"
    ):
        read_ijb(tmp_path)
    gallery.write_text(HEADER + "20,2,x.jpg,1\n77,2,y.jpg,1\n")
    with pytest.raises(ValueError, match=r"ijbc_1N_gallery_G2.csv:3: template 77 is not in ijbc_face_tid_mid"):
        read_ijb(tmp_path)


def test_media_and_landmark_files_must_agree(tmp_path: Path) -> None:
    meta = _write_set(tmp_path)
    marks = meta / "ijbc_name_5pts_score.txt"
    _replace_line(marks, 4, "9.jpg" + marks.read_text().splitlines()[3][5:])
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt:4: image '9.jpg', but line 4 of"):
        read_ijb(tmp_path)
    _replace_line(meta / "ijbc_face_tid_mid.txt", 2, "2.jpg ten 101")
    with pytest.raises(ValueError, match=r"ijbc_face_tid_mid.txt:2: the template id must be an integer"):
        read_ijb(tmp_path)


def test_subject_csv_rejects_a_template_with_two_subjects(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text(HEADER + "5,1,a,1\n5,2,b,1\n")
    with pytest.raises(ValueError, match=r"g.csv:3: template 5 listed with subject 2"):
        read_subject_csv(path)


@pytest.mark.parametrize("chunk", [1 << 24, 17])
def test_pair_file_fast_parser(tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ijb_data, "_CHUNK_BYTES", chunk)
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.integers(1, 30000, size=(200, 2)), rng.integers(0, 2, size=200)])
    path = tmp_path / "pairs.txt"
    path.write_text("\ufeff" + "".join(f"{a} {b} {y}\r\n" for a, b, y in table) + "\n")  # BOM, CRLF, blank end
    np.testing.assert_array_equal(read_pair_file(path), table)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    cases = [(57, "3 4", "expected 3 fields"), (120, "3 4 1 1", "expected 3 fields"),
             (200, "3 x 1", "every field must be an integer"), (5, "3 4.5 1", "integer")]  # fmt: skip
    for lineno, bad, message in cases:
        broken = list(lines)
        broken[lineno - 1] = bad
        path.write_text("\n".join(broken) + "\n")
        with pytest.raises(ValueError, match=rf"pairs.txt:{lineno}: .*{message}"):
            read_pair_file(path)
