"""Image-file datasets: LabelledImages (bad-image policy, batched uint8 fetch), IndexedDataset, EpochSeeded."""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import default_collate

from facetrain.data.batches import CollatedBatch, collate_batch
from facetrain.data.dataset import IndexedDataset
from facetrain.data.image_files import IdentityFolders, LabelledImages
from facetrain.data.sampler import EpochSeeded
from facetrain.data.transforms import Uint8CHW
from tests.unit.test_decode import red_image, write_files, write_image


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return write_files(tmp_path)


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


def test_identity_folders_scan_the_tree_into_the_dataset_interface(tmp_path: Path) -> None:
    for identity, count in (("b_person", 2), ("a_person", 1)):
        for i in range(count):
            write_image(tmp_path / "root" / identity / f"{i}.png", red_image(8), ".png")
    (tmp_path / "root" / "empty_person").mkdir()  # no images: not an identity
    (tmp_path / "root" / "a_person" / "notes.txt").write_text("not an image")
    data = IdentityFolders(tmp_path / "root", on_bad_image="skip")
    assert data.classes == ["a_person", "b_person"] and data.num_classes == 2 and len(data) == 3
    assert data.labels.tolist() == [0, 1, 1] and data.labels.dtype == np.int64
    assert data.describe(2) == str(tmp_path / "root" / "b_person" / "1.png") and data.on_bad_image == "skip"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IdentityFolders(tmp_path / "nowhere")
