"""The training-data pipeline on a dataset that declares its own start-up check (facetrain.data.pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facetrain.data.dataset import FaceDataset, IndexedDataset
from facetrain.data.noise import LabelNoiseConfig
from facetrain.data.pipeline import build_training_data, write_records


class CheckedPack(FaceDataset):
    """Six samples of three unnamed identities; sample 2 is bad by its own check."""

    labels = np.asarray([0, 0, 1, 1, 2, 2])
    num_classes = 3

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"pack record {index}"

    def find_bad(self, index: np.ndarray, check: str) -> list[tuple[int, str]]:
        return [(int(p), "broken record") for p in np.flatnonzero(index == 2)]


def build(on_bad_image: str, noise: dict | None = None):
    return build_training_data(
        CheckedPack(), None, "header", on_bad_image, LabelNoiseConfig.from_mapping(noise), "CheckedPack", "/pack"
    )


def test_a_declared_check_stops_naming_the_sample() -> None:
    with pytest.raises(OSError, match=r"1 unreadable training image\(s\) under /pack .*first: pack record 2: broken"):
        build("error")


def test_skipping_keeps_an_unnamed_label_space_and_records_it(tmp_path: Path) -> None:
    data = build("skip")
    assert isinstance(data.train_set, IndexedDataset) and data.train_set.index.tolist() == [0, 1, 3, 4, 5]
    assert data.labels.tolist() == [0, 0, 1, 2, 2] and data.num_classes == 3 and data.classes is None
    assert data.bad == [("pack record 2", "broken record")]
    write_records(tmp_path, data, "header")
    summary = json.loads((tmp_path / "data_exclusions.json").read_text())
    assert summary["bad_images"]["count"] == 1 and summary["num_images"] == 5 and summary["num_classes"] == 3
    assert (tmp_path / "bad_images.txt").read_text().splitlines()[1] == "pack record 2\tbroken record"


def test_untouched_data_is_the_dataset_itself() -> None:
    class Clean(CheckedPack):
        def find_bad(self, index: np.ndarray, check: str) -> None:
            return None

    data = build_training_data(Clean(), None, "header", "error", LabelNoiseConfig.from_mapping(None), "Clean", "/p")
    assert type(data.train_set) is Clean and data.summary["bad_images"]["check"].startswith("none (Clean checks")
