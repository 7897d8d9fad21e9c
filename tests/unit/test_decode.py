"""The one decoder (facetrain.data.decode) and the start-up file checks (facetrain.data.checks)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facetrain.data import decode
from facetrain.data.checks import find_bad_images, image_problem
from facetrain.data.decode import bytes_problem, decode_checked, read_rgb, rgb_or_problem


def write_image(path: Path, rgb: np.ndarray, ext: str = ".jpg") -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def face_like_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (gradients + blurred noise), the kind of content a face crop has."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 255 // size, y * 255 // size, (x + y) * 255 // (2 * size)], axis=-1).astype(np.uint8)
    noise = np.random.default_rng(seed).integers(0, 60, image.shape, dtype=np.uint8)
    return cv2.GaussianBlur(image + noise, (5, 5), 0)


def damage_jpeg_middle(data: bytes) -> bytes:
    """A JPEG damaged in the middle: a run of 16 bytes halfway through its entropy-coded data overwritten, the start
    and end markers intact (what a bad sector or a broken transfer leaves).

    The run is fill bytes and a bogus marker, a damage libjpeg notices and, as it happens in the wild, only warns
    about ("Corrupt JPEG data: premature end of data segment") while OpenCV returns an image grey from there on. A
    run that happens to decode (e.g. zeros on a small image) gives no decoder anything to report.
    """
    sos = data.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")  # the entropy-coded data starts here
    middle = (scan + len(data) - 2) // 2
    run = b"\xff" * 15 + b"\x55"
    return data[:middle] + run + data[middle + len(run) :]


def red_image(size: int = 32) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = 200  # R
    image[..., 2] = 20  # B
    return image


def write_files(tmp_path: Path) -> dict[str, Path]:
    """A good JPEG and PNG and the ways files arrive broken (truncated, empty, padded, garbage, junk, missing)."""
    good = tmp_path / "good.jpg"
    data = write_image(good, red_image())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + b"\x00" * 300)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"hello, not an image")
    # Valid start and end markers around junk: passes the header check, fails to decode.
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    png = tmp_path / "good.png"
    png_data = write_image(png, red_image(), ".png")
    png_trunc = tmp_path / "truncated.png"
    png_trunc.write_bytes(png_data[:-20])
    return {
        "good": good,
        "truncated": truncated,
        "empty": empty,
        "padded": padded,
        "garbage": garbage,
        "junk": junk,
        "png": png,
        "png_trunc": png_trunc,
        "missing": tmp_path / "missing.jpg",
    }


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return write_files(tmp_path)


def test_read_rgb_returns_rgb(files: dict[str, Path]) -> None:
    image = read_rgb(files["good"])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image[..., 0].mean() > 150 > image[..., 2].mean()  # red stays in channel 0
    assert read_rgb(files["padded"]).shape == (32, 32, 3)  # zero padding after EOI is fine
    assert read_rgb(files["png"]).shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("truncated", "truncated JPEG"),
        ("empty", "empty file"),
        ("garbage", "not a JPEG"),
        ("junk", "undecodable"),
        ("png_trunc", "truncated PNG"),
        ("missing", "No such file"),
    ],
)
def test_read_rgb_names_the_file_and_reason(files: dict[str, Path], key: str, reason: str) -> None:
    with pytest.raises(OSError, match=reason) as info:
        read_rgb(files[key])
    assert str(files[key]) in str(info.value)


def test_header_and_decode_checks(files: dict[str, Path]) -> None:
    for key in ("good", "padded", "png", "junk"):  # junk has valid markers: only decoding finds it
        assert image_problem(files[key], "header") is None, key
    assert "undecodable" in image_problem(files["junk"], "decode")
    assert "truncated" in image_problem(files["truncated"], "header")
    assert "empty" in image_problem(files["empty"], "header")
    assert "cannot open" in image_problem(files["missing"], "header")
    paths = np.asarray([str(files[k]) for k in ("good", "truncated", "padded", "empty", "junk")])
    assert [i for i, _ in find_bad_images(paths, "header")] == [1, 3]
    assert [i for i, _ in find_bad_images(paths, "decode", threads=2)] == [1, 3, 4]
    assert find_bad_images(paths, "none") == []
    with pytest.raises(ValueError, match="data.verify_images"):
        find_bad_images(paths, "full")


def test_jpeg_damaged_in_the_middle_is_found_by_the_decode_check(tmp_path: Path, capfd) -> None:
    good = tmp_path / "good.jpg"
    data = write_image(good, face_like_image())
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(damage_jpeg_middle(data))
    # What let it through before: the markers are intact and OpenCV returns an image, but its lower part is gone.
    assert image_problem(damaged, "header") is None
    decoded = cv2.imdecode(np.fromfile(damaged, np.uint8), cv2.IMREAD_COLOR)
    clean = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and np.abs(decoded[-8:].astype(int) - clean[-8:]).mean() > 10
    capfd.readouterr()
    problem = image_problem(damaged, "decode")
    assert problem is not None and "damaged image data" in problem and "Corrupt JPEG data" in problem, problem
    assert "Corrupt JPEG" not in capfd.readouterr().err  # reported in the reason, not sprayed on stderr
    assert image_problem(good, "decode") is None
    paths = np.asarray([str(good), str(damaged), str(good)])
    assert find_bad_images(paths, "decode", threads=2) == [(1, problem)]
    image, why = decode_checked(damaged.read_bytes())
    assert why == problem and image is not None  # the damaged image is returned too, for whoever wants to look


def test_decode_check_passes_other_stderr_text_on(monkeypatch, capfd) -> None:
    data = cv2.imencode(".jpg", face_like_image(32))[1].tobytes()
    real = cv2.imdecode

    def chatty(buffer: np.ndarray, flags: int) -> np.ndarray:
        os.write(2, b"unrelated message from another library\n")
        return real(buffer, flags)

    monkeypatch.setattr(decode.cv2, "imdecode", chatty)
    capfd.readouterr()
    image, why = decode_checked(data)
    assert why is None and image.shape == (32, 32, 3)
    assert "unrelated message from another library" in capfd.readouterr().err


def test_bytes_problem_signatures() -> None:
    assert bytes_problem(b"", b"", 0) == "empty file (0 bytes)"
    assert bytes_problem(b"BM" + b"\x00" * 10, b"\x00", 12) is None
    assert bytes_problem(b"RIFF\x00\x00\x00\x00WEBP", b"\x00", 12) is None
    assert bytes_problem(b"\xff\xd8\xff\xe0", b"...\xff\xd9\r\n", 100) is None


def test_rgb_or_problem_is_the_fast_path_of_read_rgb(files: dict[str, Path]) -> None:
    data = files["good"].read_bytes()
    image, problem = rgb_or_problem(data)
    assert problem is None and np.array_equal(image, read_rgb(files["good"]))
    assert np.array_equal(rgb_or_problem(np.frombuffer(data, np.uint8).reshape(-1, 1))[0], image)  # cv2.imencode shape
    assert rgb_or_problem(files["truncated"].read_bytes()) == (
        None, "truncated JPEG (no end-of-image marker FFD9 at the end)"
    )  # fmt: skip
    assert rgb_or_problem(b"") == (None, "empty file (0 bytes)")
    assert rgb_or_problem(files["junk"].read_bytes()) == (None, "undecodable (corrupt or unsupported format)")
