"""Image decoding and checks, the uint8/CHW transforms, the device augmentation, CenterCropResize, LabelledImages."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import default_collate

from facetrain.data import images
from facetrain.data.images import (
    CenterCropResize,
    CollatedBatch,
    GpuAugment,
    IndexedDataset,
    LabelledImages,
    Uint8CHW,
    bytes_problem,
    collate_batch,
    decode_checked,
    find_bad_images,
    find_normalize,
    gpu_augment,
    hwc_to_chw,
    image_problem,
    read_rgb,
    to_tensor,
)
from facetrain.data.sampler import EpochSeeded


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


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
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

    monkeypatch.setattr(images.cv2, "imdecode", chatty)
    capfd.readouterr()
    image, why = decode_checked(data)
    assert why is None and image.shape == (32, 32, 3)
    assert "unrelated message from another library" in capfd.readouterr().err


def test_bytes_problem_signatures() -> None:
    assert bytes_problem(b"", b"", 0) == "empty file (0 bytes)"
    assert bytes_problem(b"BM" + b"\x00" * 10, b"\x00", 12) is None
    assert bytes_problem(b"RIFF\x00\x00\x00\x00WEBP", b"\x00", 12) is None
    assert bytes_problem(b"\xff\xd8\xff\xe0", b"...\xff\xd9\r\n", 100) is None


def test_hwc_to_chw_matches_transpose() -> None:
    rng = np.random.default_rng(0)
    for shape in [(5, 7, 3), (4, 6, 1), (3, 2, 4), (6, 5)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        out = hwc_to_chw(image)
        assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, expected)
    view = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)[:, ::-1]  # non-contiguous input
    assert np.array_equal(hwc_to_chw(view), view.transpose(2, 0, 1))


def test_uint8_chw_transform() -> None:
    image = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = to_tensor(Uint8CHW(), image)
    assert out.dtype == torch.uint8 and out.shape == (3, 6, 5)
    assert torch.equal(out, torch.from_numpy(image).permute(2, 0, 1))
    cropped = Uint8CHW(A.Compose([A.CenterCrop(4, 4)]))(image=image)["image"]
    assert cropped.shape == (3, 4, 4)
    with pytest.raises(TypeError, match="data.uint8_transform"):
        Uint8CHW(A.Compose([A.Normalize()]))(image=image)


def test_gpu_augment_equals_albumentations_normalize() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cpu = A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])
    expected = torch.stack([cpu(image=i)["image"] for i in images])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    out = gpu_augment(batch, mean, std, flip_p=0.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    flipped = gpu_augment(batch, mean, std, flip_p=1.0)
    torch.testing.assert_close(flipped, expected.flip(3), atol=1e-5, rtol=1e-5)


def test_gpu_augment_flip_rate_and_generator() -> None:
    batch = torch.arange(4000 * 2, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(4000, 1, 1, 2)
    out = gpu_augment(batch, [0.0], [1.0 / 255], flip_p=0.3, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] != batch[:, 0, 0, 0].float()).float().mean().item()
    assert 0.27 < flipped < 0.33
    again = gpu_augment(batch, [0.0], [1.0 / 255], flip_p=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(TypeError, match="uint8"):
        gpu_augment(batch.float(), [0.0], [1.0], 0.5)
    with pytest.raises(ValueError, match="mean/std"):
        gpu_augment(batch, [0.0, 0.0], [1.0, 1.0], 0.5)


def test_gpu_augment_config_validation() -> None:
    aug = GpuAugment(flip_p=1.0)
    batch = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    batch[..., 0] = 255
    assert aug(batch, train=False)[0, 0, 0, 0].item() == pytest.approx(1.0)  # no flip outside training
    assert aug(batch, train=True)[0, 0, 0, 0].item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="data.gpu_augment.flip_p"):
        GpuAugment(flip_p=1.5)
    with pytest.raises(ValueError, match="data.gpu_augment.std"):
        GpuAugment(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="same number"):
        GpuAugment(mean=(0.5,), std=(0.5, 0.5))


def test_find_normalize() -> None:
    pipeline = A.Compose([A.HorizontalFlip(), A.Normalize(mean=[0.1, 0.2, 0.3], std=[0.5] * 3), ToTensorV2()])
    mean, std, max_value = find_normalize(pipeline)
    assert mean == pytest.approx((0.1, 0.2, 0.3)) and std == pytest.approx((0.5,) * 3) and max_value == 255
    assert find_normalize(A.Compose([ToTensorV2()])) is None
    assert find_normalize(None) is None


def test_center_crop_resize() -> None:
    image = np.zeros((250, 250, 3), np.uint8)
    image[100:150, 100:150] = 255  # a centred white square, 50 px of 250
    out = CenterCropResize(crop_size=150, size=(112, 112))(image=image)["image"]
    assert out.shape == (112, 112, 3)
    # 50/150 of the crop -> ~37 px of 112, centred
    row = out[56, :, 0] > 127
    assert abs(int(row.sum()) - 37) <= 2 and abs(int(np.flatnonzero(row).mean()) - 56) <= 1
    rect = CenterCropResize(crop_size=(120, 100), size=(112, 96))(image=image)["image"]
    assert rect.shape == (112, 96, 3)
    pipeline = A.Compose([CenterCropResize(150), A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])
    assert pipeline(image=image)["image"].shape == (3, 112, 112)
    with pytest.raises(ValueError, match="crop_size"):
        CenterCropResize(crop_size=0)
    with pytest.raises(ValueError, match="size"):
        CenterCropResize(crop_size=100, size=(112,))


def test_labelled_images_error_and_skip(files: dict[str, Path], tmp_path: Path, caplog) -> None:
    paths = np.asarray([str(files["good"]), str(files["truncated"]), str(files["png"])])
    labels = np.asarray([0, 1, 2])
    strict = LabelledImages(paths, labels, Uint8CHW())
    with pytest.raises(OSError, match="truncated.jpg.*data.on_bad_image=skip"):
        strict[1]
    log_file = tmp_path / "run" / "bad_images.txt"
    log_file.parent.mkdir()
    lenient = LabelledImages(paths, labels, Uint8CHW(), on_bad_image="skip", bad_image_log=log_file)
    with caplog.at_level(logging.WARNING):
        image, label = lenient[1]
        lenient[1]  # reported once per file and process
    assert label == 2 and image.dtype == torch.uint8  # the next readable sample, with its own label
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(files["truncated"]) + "\t")
    assert sum("truncated.jpg" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="data.on_bad_image"):
        LabelledImages(paths, labels, on_bad_image="ignore")


def test_indexed_dataset_relabels_and_remaps(files: dict[str, Path]) -> None:
    base = LabelledImages(np.asarray([str(files["good"]), str(files["png"])]), np.asarray([0, 1]), Uint8CHW())
    view = IndexedDataset(base, np.asarray([1, 1, 0]), np.asarray([5, 6, 7]))
    assert len(view) == 3 and [view[i][1] for i in range(3)] == [5, 6, 7]
    assert torch.equal(view[0][0], base[1][0])


def test_indexed_dataset_batches_through_its_base(files: dict[str, Path]) -> None:
    base = LabelledImages(np.asarray([str(files["good"]), str(files["png"])]), np.asarray([0, 1]), Uint8CHW())
    view = IndexedDataset(base, np.asarray([1, 1, 0]), np.asarray([5, 6, 7]))
    assert view.fetches_batches and view.transform is base.transform
    batch = view.__getitems__([2, 0])
    assert isinstance(batch, CollatedBatch) and batch.labels.tolist() == [7, 5]
    assert torch.equal(collate_batch(batch)[0], default_collate([view[2], view[0]])[0])
    flipped = IndexedDataset(
        LabelledImages(base.paths, base.labels, A.Compose([A.HorizontalFlip(p=1), ToTensorV2()])),
        np.asarray([0, 1]),
        np.asarray([3, 4]),
    )
    assert not flipped.fetches_batches and [y for _, y in flipped.__getitems__([1, 0])] == [4, 3]


def test_epoch_seeded_seeds_the_transform_behind_an_indexed_dataset(files: dict[str, Path]) -> None:
    """Exclusions and label noise wrap plug-in datasets in IndexedDataset; per-sample seeds must still reach them."""
    paths = np.asarray([str(files["good"])] * 8)
    augment = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=1.0), ToTensorV2()])
    view = IndexedDataset(LabelledImages(paths, np.zeros(8, dtype=np.int64), augment), np.arange(8), np.zeros(8))
    seeded = EpochSeeded(view, seed=3)
    first = [seeded[(1, i)][0] for i in range(8)]
    view.base.transform.set_random_seed(12345)  # disturb the transform's own state: the seeds must override it
    again = [seeded[(1, i)][0] for i in reversed(range(8))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(first[0], x) for x in first[1:])  # the augmentation really varies per sample


def noisy_image(seed: int, size: int = 32) -> np.ndarray:
    return cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 0)


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Six 32×32 images, JPEG and PNG (one grey-scale PNG: decoded to 3 channels), with labels."""
    paths = []
    for i in range(6):
        path = tmp_path / "mixed" / f"{i}{'.png' if i % 2 else '.jpg'}"
        write_image(path, noisy_image(i), path.suffix)
        paths.append(str(path))
    grey = tmp_path / "mixed" / "grey.png"
    cv2.imwrite(str(grey), noisy_image(9)[..., 0])
    paths.append(str(grey))
    return np.asarray(paths), np.asarray([3, 1, 4, 1, 5, 9, 2], dtype=np.int64)


def per_sample(dataset: LabelledImages, indices: list[int]) -> list[torch.Tensor]:
    return default_collate([dataset[i] for i in indices])


def test_batched_fetch_equals_per_sample_fetch(mixed: tuple[np.ndarray, np.ndarray]) -> None:
    dataset = LabelledImages(*mixed, Uint8CHW())
    assert dataset.fetches_batches
    for indices in ([0, 1, 2, 3, 4, 5, 6], [6, 2, 2, 0], [5]):
        raw = dataset.__getitems__(indices)
        assert isinstance(raw, CollatedBatch) and len(raw) == len(indices)
        images, labels = collate_batch(raw)
        expected_images, expected_labels = per_sample(dataset, indices)
        assert images.dtype == torch.uint8 and images.is_contiguous() and labels.dtype == torch.int64
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
        # The default collate_fn still gets the same batch (it re-stacks the samples the batch reads as).
        again = default_collate(raw)
        assert torch.equal(again[0], expected_images) and torch.equal(again[1], expected_labels)


def test_batched_fetch_falls_back_to_samples_for_other_transforms(mixed: tuple[np.ndarray, np.ndarray]) -> None:
    crop = A.Compose([A.CenterCrop(16, 16)])
    floats = A.Compose([A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])
    for transform in (Uint8CHW(crop), floats, None):
        dataset = LabelledImages(*mixed, transform)
        assert not dataset.fetches_batches
        samples = dataset.__getitems__([2, 0])
        assert isinstance(samples, list) and len(samples) == 2
        batch, expected = collate_batch(samples), per_sample(dataset, [2, 0])
        assert torch.equal(batch[0], expected[0]) and torch.equal(batch[1], expected[1])


def test_batched_fetch_error_and_skip(
    mixed: tuple[np.ndarray, np.ndarray], files: dict[str, Path], tmp_path: Path, caplog
) -> None:
    paths, labels = mixed
    paths = np.concatenate([paths[:2], [str(files["truncated"])], paths[2:]])
    labels = np.concatenate([labels[:2], [7], labels[2:]])
    strict = LabelledImages(paths, labels, Uint8CHW())
    with pytest.raises(OSError, match="truncated.jpg.*training sample 2; data.on_bad_image=skip"):
        strict.__getitems__([0, 1, 2, 3])
    log_file = tmp_path / "run" / "bad_images.txt"
    log_file.parent.mkdir()
    lenient = LabelledImages(paths, labels, Uint8CHW(), on_bad_image="skip", bad_image_log=log_file)
    with caplog.at_level(logging.WARNING):
        images, got = collate_batch(lenient.__getitems__([0, 2, 1, 2]))
    expected_images, expected_labels = per_sample(lenient, [0, 3, 1, 3])  # the next readable sample, its label
    assert torch.equal(images, expected_images) and torch.equal(got, expected_labels)
    assert got.tolist() == [3, 4, 1, 4]
    lines = log_file.read_text().splitlines()  # recorded once per file and process
    assert len(lines) == 1 and lines[0].startswith(str(files["truncated"]) + "\t")
    assert sum("truncated.jpg" in r.message for r in caplog.records) == 1


def test_batched_fetch_names_an_image_of_another_size(mixed: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    write_image(big, noisy_image(0, size=40))
    paths = np.concatenate([mixed[0], [str(big)]])
    dataset = LabelledImages(paths, np.arange(len(paths)), Uint8CHW())
    with pytest.raises(ValueError, match=r"'.*big\.jpg' is 40x40 but '.*0\.jpg', the first of its batch, is 32x32"):
        dataset.__getitems__([0, 1, len(paths) - 1])
    assert dataset.__getitems__([len(paths) - 1]).images.shape == (1, 3, 40, 40)  # alone it is fine
