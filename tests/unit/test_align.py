"""5-point alignment: Umeyama known answers, templates, align_face, landmark files and scripts/align_faces.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from facetrain.data.align import (
    TEMPLATES,
    ARCFACE_112x112,
    LandmarkRow,
    RowError,
    SPHEREFACE_112x96,
    align_face,
    parse_landmarks,
    similarity_transform,
)
from tests.conftest import ROOT
from tests.unit.test_decode import damage_jpeg_middle, face_like_image


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_templates_are_the_reference_values() -> None:
    # docs/protocols.md §4.4: SphereFace 112x96 and InsightFace arcface_src = the same with x + 8
    assert SPHEREFACE_112x96[0].tolist() == [30.2946, 51.6963]
    assert SPHEREFACE_112x96[4].tolist() == [62.7299, 92.2041]
    np.testing.assert_allclose(ARCFACE_112x112[:, 0], SPHEREFACE_112x96[:, 0] + 8)
    np.testing.assert_allclose(ARCFACE_112x112[2], [56.0252, 71.7366])
    assert TEMPLATES["112x96"][1] == (112, 96) and TEMPLATES["112x112"][1] == (112, 112)


@pytest.mark.parametrize(("scale", "degrees", "tx", "ty"), [(1.7, 30, 5, -3), (0.4, -75, 100, 20), (1, 180, 0, 0)])
def test_similarity_transform_recovers_a_known_matrix(scale: float, degrees: float, tx: float, ty: float) -> None:
    truth = similarity(scale, degrees, tx, ty)
    dst = ARCFACE_112x112
    # landmarks as a detector would report them in a rotated, scaled, shifted image
    inverse = cv2.invertAffineTransform(truth)
    src = apply(inverse, dst)
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)
    random_src = np.random.default_rng(0).uniform(0, 200, (7, 2))
    np.testing.assert_allclose(similarity_transform(random_src, apply(truth, random_src)), truth, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    src = ARCFACE_112x112
    mirrored = src * [-1, 1]
    matrix = similarity_transform(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0
    collinear = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(similarity_transform(collinear, collinear * 2), [[2, 0, 0], [0, 2, 0]], atol=1e-12)


def test_similarity_transform_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_112x112)
    with pytest.raises(ValueError, match="NaN"):
        similarity_transform(np.full((5, 2), np.nan), ARCFACE_112x112)
    with pytest.raises(ValueError, match="N×2"):
        similarity_transform(np.ones((5, 3)), np.ones((5, 3)))


def dotted_image(points: np.ndarray, size: tuple[int, int] = (250, 250)) -> np.ndarray:
    """Five dots in different colours (for the script tests)."""
    image = np.zeros((*size, 3), np.uint8)
    for i, (x, y) in enumerate(points):
        cv2.circle(image, (round(x), round(y)), 4, (50 * (i + 1), 255, 0), -1)
    return image


def blob_centre(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (x, y) of a single-blob image."""
    weight = image.astype(np.float64).sum(axis=2) if image.ndim == 3 else image.astype(np.float64)
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def blob(point: np.ndarray, size: tuple[int, int] = (250, 250), sigma: float = 3.0) -> np.ndarray:
    ys, xs = np.indices(size)
    g = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * sigma**2))
    return np.repeat((255 * g).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("name", ["112x112", "112x96"])
def test_align_face_puts_landmarks_on_the_template(name: str) -> None:
    template, (h, w) = TEMPLATES[name]
    truth = similarity(1.6, 20, 60, 30)
    landmarks = apply(truth, template)
    for point, target in zip(landmarks, template):
        aligned = align_face(blob(point), landmarks, name)
        assert aligned.shape == (h, w, 3)
        np.testing.assert_allclose(blob_centre(aligned), target, atol=0.3)


def test_align_face_rejects_degenerate_landmarks() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="degenerate"):
        align_face(image, np.full((5, 2), 20.0) + np.random.default_rng(0).uniform(0, 0.1, (5, 2)))
    with pytest.raises(ValueError, match="degenerate"):
        align_face(image, np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="shape"):
        align_face(image, np.ones((4, 2)))
    with pytest.raises(ValueError, match="unknown alignment template"):
        align_face(image, ARCFACE_112x112, "128x128")


def test_parse_csv_and_lst(tmp_path: Path) -> None:
    coords = ARCFACE_112x112.ravel()
    csv_file = tmp_path / "marks.csv"
    row = ",".join(f"{v:.4f}" for v in coords)
    csv_file.write_text(
        "path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n"
        f"a/001.jpg,{row}\n"
        "# a comment\n\n"
        f'"b,c/002.jpg",{row}\n'
        "a/003.jpg,1,2,3\n"
        f"a/001.jpg,{row}\n"
        f"a/004.jpg,{row.replace('38.2946', 'x')}\n"
    )
    items = list(parse_landmarks(csv_file))
    assert [type(i) for i in items] == [LandmarkRow, LandmarkRow, RowError, RowError, RowError]
    assert items[0].lineno == 2 and items[1].path == "b,c/002.jpg"
    np.testing.assert_allclose(items[0].landmarks, ARCFACE_112x112, atol=1e-4)
    assert items[2].lineno == 6 and "11 CSV columns" in items[2].reason
    assert "duplicate path (first at line 2)" in items[3].reason
    assert "non-numeric" in items[4].reason

    xs, ys = ARCFACE_112x112[:, 0], ARCFACE_112x112[:, 1]
    lst = tmp_path / "train.lst"
    fields = ["1", "/raid/CASIA-WebFace/0000045/001.jpg", "0", "10", "20", "90", "100", *map(str, xs), *map(str, ys)]
    lst.write_text("\t".join(fields) + "\n1\t/raid/CASIA-WebFace/0000045/002.jpg\t0\n0\tx.jpg\t0\t1\t2\n")
    items = list(parse_landmarks(lst))
    assert isinstance(items[0], LandmarkRow)
    np.testing.assert_allclose(items[0].landmarks, ARCFACE_112x112)  # x1..x5, y1..y5 -> (x, y) rows
    assert isinstance(items[1], RowError) and "no landmarks" in items[1].reason and items[1].lineno == 2
    assert isinstance(items[2], RowError) and "17 tab-separated" in items[2].reason


@pytest.fixture(scope="module")
def align_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("align_faces", ROOT / "scripts" / "align_faces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_align_faces_script(tmp_path: Path, align_script: ModuleType, capsys) -> None:
    root, out = tmp_path / "raw", tmp_path / "aligned"
    truth = similarity(1.5, -10, 40, 50)
    landmarks = apply(truth, ARCFACE_112x112)
    for name in ("0000045/001.jpg", "0000045/002.jpg", "0000099/001.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), dotted_image(landmarks))
    (root / "0000099/002.jpg").write_bytes(b"\xff\xd8\xff\xe0broken")
    row = ",".join(str(v) for v in landmarks.ravel())
    marks = tmp_path / "marks.csv"
    marks.write_text(
        f"0000045/001.jpg,{row}\n"
        f"{root}/0000045/002.jpg,{row}\n"  # absolute path under --root
        f"0000099/001.jpg,{','.join(['10'] * 10)}\n"  # degenerate
        f"0000099/002.jpg,{row}\n"  # unreadable
        f"0000099/003.jpg,{row}\n"  # missing
        "0000099/004.jpg,1,2\n"  # wrong column count
        f"../escape.jpg,{row}\n"
    )
    args = ["--landmarks", str(marks), "--root", str(root), "--out", str(out), "--size", "112x96", "--quiet"]
    assert align_script.main(args) == 1
    aligned = cv2.imread(str(out / "0000045/001.jpg"))
    assert aligned.shape == (112, 96, 3) and (out / "0000045/002.jpg").is_file()
    expected = align_face(cv2.imread(str(root / "0000045/001.jpg")), landmarks, "112x96")
    assert np.abs(aligned.astype(int) - expected).mean() < 2  # the same warp, up to JPEG loss
    failed = (out / "failed.txt").read_text().splitlines()
    assert failed[0].startswith("# 5 entries")
    reasons = {int(line.split("\t")[0]): line.split("\t")[2] for line in failed[1:]}
    assert sorted(reasons) == [3, 4, 5, 6, 7]
    assert "degenerate" in reasons[3] and "truncated JPEG" in reasons[4] and "not found" in reasons[5]
    assert "11 CSV columns" in reasons[6] and "escapes --root" in reasons[7]
    summary = capsys.readouterr().out
    assert "aligned 2 of 7 entries" in summary and "5 failed" in summary and f"{marks}:3:" in summary
    assert align_script.main([*args, "--allow-failures"]) == 0


def test_align_faces_script_lst_with_prefix(tmp_path: Path, align_script: ModuleType) -> None:
    root, out = tmp_path / "CASIA-WebFace", tmp_path / "out"
    landmarks = apply(similarity(1.2, 5, 30, 40), ARCFACE_112x112)
    (root / "0000045").mkdir(parents=True)
    cv2.imwrite(str(root / "0000045/001.jpg"), dotted_image(landmarks))
    fields = ["0", "/raid5data/dplearn/CASIA-WebFace/0000045/001.jpg", "0", "0", "0", "250", "250"]
    fields += [str(v) for v in landmarks[:, 0]] + [str(v) for v in landmarks[:, 1]]
    lst = tmp_path / "train.lst"
    lst.write_text("\t".join(fields) + "\n")
    argv = ["--landmarks", str(lst), "--root", str(root), "--out", str(out), "--quiet", "--workers", "2"]
    assert align_script.main(argv) == 1  # absolute path outside --root without --strip-prefix
    assert align_script.main([*argv, "--strip-prefix", "/raid5data/dplearn/CASIA-WebFace"]) == 0
    aligned = cv2.imread(str(out / "0000045/001.jpg"))
    expected = align_face(cv2.imread(str(root / "0000045/001.jpg")), landmarks, "112x112")
    assert aligned.shape == (112, 112, 3) and np.abs(aligned.astype(int) - expected).mean() < 2
    assert (out / "failed.txt").read_text().startswith("# 0 entries")


# --- landmark files and photos as they circulate ---------------------------------------------------------------


def test_headerless_csv_whose_first_row_has_no_face_is_reported(tmp_path: Path) -> None:
    row = ",".join(f"{v:.4f}" for v in ARCFACE_112x112.ravel())
    marks = tmp_path / "marks.csv"
    marks.write_text(f"img.jpg,,,,,,,,,,\nb.jpg,{row}\nc.jpg,1,2,,4,5,6,7,8,9,10\n")
    items = list(parse_landmarks(marks))
    assert [type(i) for i in items] == [RowError, LandmarkRow, RowError]  # the first row is a row, not a header
    assert items[0].lineno == 1 and items[0].path == "img.jpg" and "no landmarks" in items[0].reason
    assert items[2].lineno == 3 and "1 of 10 landmark values empty" in items[2].reason


@pytest.mark.parametrize(
    "header",
    ["path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5", "image,le_x,le_y,re_x,re_y,n_x,n_y,lm_x,lm_y,rm_x,rm_y"],
)
def test_csv_header_is_recognised_by_its_names_with_bom_and_crlf(tmp_path: Path, header: str) -> None:
    row = ",".join(f"{v:.4f}" for v in ARCFACE_112x112.ravel())
    marks = tmp_path / "marks.csv"
    marks.write_bytes(b"\xef\xbb\xbf" + f"{header}\r\na.jpg,{row}\r\nb.jpg,{row}\r\n".encode())
    items = list(parse_landmarks(marks))
    assert [(type(i), i.lineno, i.path) for i in items] == [(LandmarkRow, 2, "a.jpg"), (LandmarkRow, 3, "b.jpg")]
    # A first row with numbers in it is data, even if some values are not (reported, not taken for a header).
    marks.write_text(f"a.jpg,{row.replace('38.2946', 'x')}\nb.jpg,{row}\n")
    items = list(parse_landmarks(marks))
    assert isinstance(items[0], RowError) and items[0].lineno == 1 and "non-numeric" in items[0].reason


def test_align_script_reports_every_row_and_refuses_a_damaged_jpeg(
    tmp_path: Path, align_script: ModuleType, capsys
) -> None:
    root, out = tmp_path / "raw", tmp_path / "aligned"
    landmarks = apply(similarity(1.5, -10, 40, 50), ARCFACE_112x112)
    photo = cv2.resize(face_like_image(64), (250, 250))
    root.mkdir()
    cv2.imwrite(str(root / "good.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (root / "damaged.jpg").write_bytes(damage_jpeg_middle((root / "good.jpg").read_bytes()))
    assert cv2.imread(str(root / "damaged.jpg")) is not None  # OpenCV alone would align it, half grey
    row = ",".join(str(v) for v in landmarks.ravel())
    marks = tmp_path / "marks.csv"
    marks.write_text(f"img.jpg,,,,,,,,,,\ngood.jpg,{row}\ndamaged.jpg,{row}\n")  # header-less, no face in row 1
    args = ["--landmarks", str(marks), "--root", str(root), "--out", str(out), "--quiet"]
    assert align_script.main(args) == 1
    summary = capsys.readouterr().out
    assert "aligned 1 of 3 entries" in summary and "2 failed" in summary
    failed = (out / "failed.txt").read_text().splitlines()
    reasons = {int(line.split("\t")[0]): line.split("\t")[2] for line in failed[1:]}
    assert sorted(reasons) == [1, 3]
    assert "no landmarks" in reasons[1] and "Corrupt JPEG data" in reasons[3]
    assert (out / "good.jpg").is_file() and not (out / "damaged.jpg").exists()


def test_align_script_help_states_landmark_order_and_frame(align_script: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        align_script.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "left eye, right eye, nose, left mouth corner, right mouth corner" in text
    assert "the image's left (the person's right eye)" in text and "EXIF orientation is applied" in text
