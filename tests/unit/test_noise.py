"""Label noise: exact counts, never the same label, uniform targets, determinism, validation, the CSV record."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facetrain.data.noise import (
    LabelNoiseConfig,
    apply_label_noise,
    num_corrupted,
    outlier_noise,
    symmetric_noise,
    write_noise_csv,
)

# chi-square critical values at p = 0.001 (a fixed seed makes the test deterministic; the bound keeps it meaningful)
CHI2_999 = {8: 26.12, 9: 27.88}


def balanced_labels(classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_num_corrupted_rounds_half_up() -> None:
    assert num_corrupted(5, 0.5) == 3  # Python's round(2.5) would give 2
    assert num_corrupted(1000, 0.2) == 200
    assert num_corrupted(7, 0.0) == 0
    assert num_corrupted(3, 0.1) == 0


@pytest.mark.parametrize(("n", "rate"), [(1000, 0.1), (997, 0.3), (50, 0.6), (10, 0.05)])
def test_symmetric_exact_count_and_always_another_label(n: int, rate: float) -> None:
    labels = np.arange(n) % 7
    noisy, record = symmetric_noise(labels, rate, seed=3)
    k = num_corrupted(n, rate)
    changed = np.flatnonzero(noisy != labels)
    assert len(record) == k and np.array_equal(changed, record.indices)
    assert np.all(record.noisy_labels != record.true_labels)
    assert np.array_equal(record.true_labels, labels[record.indices])
    assert np.array_equal(record.noisy_labels, noisy[record.indices])
    assert noisy.min() >= 0 and noisy.max() < 7
    assert record.donor_indices is None
    assert np.array_equal(labels, np.arange(n) % 7)  # input untouched


def test_symmetric_targets_are_uniform_over_the_other_classes() -> None:
    labels = balanced_labels(10, 2000)
    noisy, record = symmetric_noise(labels, 0.5, seed=0)
    offsets = (record.noisy_labels - record.true_labels) % 10  # 1..9, uniform if targets are uniform
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0
    assert chi_square(counts[1:]) < CHI2_999[8]
    # and the new labels as a whole cover every class evenly
    assert chi_square(np.bincount(record.noisy_labels, minlength=10)) < CHI2_999[9]
    # the corrupted positions are spread over the classes (uniform draw over all samples)
    assert chi_square(np.bincount(record.true_labels, minlength=10)) < CHI2_999[9]


def test_symmetric_uses_num_classes_beyond_max_label() -> None:
    noisy, record = symmetric_noise(np.zeros(400, dtype=np.int64), 0.5, seed=1, num_classes=3)
    assert set(np.unique(record.noisy_labels)) == {1, 2}
    with pytest.raises(ValueError, match="at least 2 classes"):
        symmetric_noise(np.zeros(10, dtype=np.int64), 0.5, seed=1)
    with pytest.raises(ValueError, match="num_classes=2"):
        symmetric_noise(np.arange(5), 0.2, seed=1, num_classes=2)


def test_determinism_and_seed_dependence() -> None:
    labels = balanced_labels(20, 50)
    a, ra = symmetric_noise(labels, 0.2, seed=7)
    b, rb = symmetric_noise(labels, 0.2, seed=7)
    c, _ = symmetric_noise(labels, 0.2, seed=8)
    assert np.array_equal(a, b) and np.array_equal(ra.indices, rb.indices)
    assert not np.array_equal(a, c)
    ia, oa = outlier_noise(labels, 0.2, seed=7)
    ib, ob = outlier_noise(labels, 0.2, seed=7)
    assert np.array_equal(ia, ib) and np.array_equal(oa.donor_indices, ob.donor_indices)


def test_outlier_keeps_labels_and_takes_donors_from_other_identities() -> None:
    labels = balanced_labels(8, 100)
    image_index, record = outlier_noise(labels, 0.25, seed=2)
    k = num_corrupted(800, 0.25)
    assert len(record) == k
    moved = np.flatnonzero(image_index != np.arange(800))
    assert np.array_equal(moved, record.indices)
    assert np.array_equal(image_index[record.indices], record.donor_indices)
    assert np.all(labels[record.donor_indices] != labels[record.indices])
    assert np.array_equal(record.noisy_labels, labels[record.indices])  # the kept training label
    assert np.array_equal(record.true_labels, labels[record.donor_indices])  # who is really in the image
    # donors are uniform over images of the other identities: balanced classes give balanced donor classes
    assert chi_square(np.bincount(record.true_labels, minlength=8)) < 24.32  # chi2(7) at p = 0.001


def test_outlier_with_a_dominant_class_still_finds_donors() -> None:
    labels = np.zeros(1000, dtype=np.int64)
    labels[123] = 1  # the only image of identity 1
    image_index, record = outlier_noise(labels, 0.5, seed=0)
    victims_of_0 = record.indices[labels[record.indices] == 0]
    assert np.all(image_index[victims_of_0] == 123)
    with pytest.raises(ValueError, match="at least 2 identities"):
        outlier_noise(np.zeros(10, dtype=np.int64), 0.5, seed=0)


def test_rate_zero_and_kind_none_are_the_identity() -> None:
    labels = balanced_labels(5, 10)
    for config in [LabelNoiseConfig(), LabelNoiseConfig("symmetric", 0.0), LabelNoiseConfig("outlier", 0)]:
        new, index, record = apply_label_noise(labels, config)
        assert np.array_equal(new, labels) and np.array_equal(index, np.arange(50)) and len(record) == 0
    new, index, record = apply_label_noise(labels, LabelNoiseConfig("symmetric", 0.2, 1))
    assert len(record) == 10 and np.array_equal(index, np.arange(50))
    new, index, record = apply_label_noise(labels, LabelNoiseConfig("outlier", 0.2, 1))
    assert len(record) == 10 and np.array_equal(new, labels)


@pytest.mark.parametrize("rate", [0.61, -0.1, 1.0, float("nan")])
def test_rate_out_of_range_names_the_key_and_range(rate: float) -> None:
    with pytest.raises(ValueError, match=r"data\.label_noise\.rate=.* is invalid: it must be a number in \[0, 0\.6\]"):
        LabelNoiseConfig("symmetric", rate)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="data.label_noise.kind"):
        LabelNoiseConfig("asymmetric", 0.1)
    with pytest.raises(ValueError, match="data.label_noise.seed"):
        LabelNoiseConfig("symmetric", 0.1, -1)
    with pytest.raises(ValueError, match="data.label_noise.rate"):
        LabelNoiseConfig("symmetric", "0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data.label_noise.ratio"):
        LabelNoiseConfig.from_mapping({"kind": "symmetric", "ratio": 0.1})
    assert LabelNoiseConfig.from_mapping(None) == LabelNoiseConfig()
    assert LabelNoiseConfig.from_mapping({"kind": "outlier", "rate": 0.2, "seed": 3}).active


def test_noise_csv(tmp_path: Path) -> None:
    labels = balanced_labels(4, 5)
    paths = np.asarray([f"id{label}/{i:03d}.jpg" for i, label in enumerate(labels)])
    _, record = symmetric_noise(labels, 0.2, seed=0)
    rows = list(csv.DictReader(write_noise_csv(tmp_path / "label_noise.csv", record, paths).read_text().splitlines()))
    assert list(rows[0]) == ["index", "true_label", "noisy_label", "path"]
    assert [int(r["index"]) for r in rows] == record.indices.tolist()
    assert all(r["true_label"] != r["noisy_label"] for r in rows)
    _, record = outlier_noise(labels, 0.2, seed=0)
    rows = list(csv.DictReader(write_noise_csv(tmp_path / "outlier.csv", record, paths).read_text().splitlines()))
    assert list(rows[0]) == ["index", "true_label", "noisy_label", "donor_index", "path", "donor_path"]
    for r in rows:
        assert r["donor_path"] == paths[int(r["donor_index"])]
        assert int(r["true_label"]) == labels[int(r["donor_index"])]
    rows = list(csv.reader(write_noise_csv(tmp_path / "bare.csv", record).read_text().splitlines()))
    assert rows[0] == ["index", "true_label", "noisy_label", "donor_index"] and len(rows) == 1 + len(record)
