"""The training-data pipeline: dataset → exclusions → checks → label noise, and the records of what it did.

One path for every :class:`~facetrain.data.dataset.FaceDataset` (identity folders, RecordIO packs, a user's own):
the steps read only the declared interface. The order follows docs/protocols.md §6 (remove test-set overlap before
injecting noise). Every step is deterministic, so every DDP rank that runs it ends with identical labels; the data
module writes the records on global rank 0 only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facetrain.data.dataset import FaceDataset
from facetrain.data.noise import LabelNoiseConfig, NoiseRecord, apply_label_noise, write_noise_csv
from facetrain.data.overlap import IdentityList, drop_empty_classes, exclude_identities
from facetrain.utils.io import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

EXCLUSIONS_FILE = "data_exclusions.json"
NOISE_FILE = "label_noise.csv"
BAD_IMAGES_FILE = "bad_images.txt"


@dataclass
class TrainingData:
    """What the pipeline made of a dataset.

    Attributes:
        train_set: The dataset itself when no step changed it, else its view (:meth:`FaceDataset.select`).
        labels: Label of each training sample (after noise).
        classes: Identity names of labels ``0 .. num_classes-1``, or None.
        num_classes: Number of identities after exclusions and skipped images.
        summary: The body of ``data_exclusions.json``.
        bad: ``(sample, reason)`` of samples skipped at start-up.
        noise: The corrupted samples when label noise is active, else None.
        noise_names: Sample names in the noise record's index space (``label_noise.csv``'s paths), or None.
    """

    train_set: FaceDataset
    labels: np.ndarray
    classes: list[str] | None
    num_classes: int
    summary: dict[str, Any]
    bad: list[tuple[str, str]] = field(default_factory=list)
    noise: NoiseRecord | None = None
    noise_names: Sequence[str] | None = None


def check_labels(dataset: FaceDataset) -> np.ndarray:
    """The dataset's labels as int64, refusing anything but one integer label per sample."""
    labels = np.asarray(dataset.labels)
    if labels.ndim != 1 or len(labels) != len(dataset) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"data.dataset {type(dataset).__name__}: .labels must be a 1-D int array with one label per sample, "
            f"got {labels.dtype} of shape {labels.shape} for {len(dataset)} samples"
        )
    return labels.astype(np.int64, copy=False)


def build_training_data(
    dataset: FaceDataset,
    exclusion_list: IdentityList | None,
    verify_images: str,
    on_bad_image: str,
    label_noise: LabelNoiseConfig,
    kind: str,
    where: str,
) -> TrainingData:
    """Run the steps over ``dataset``.

    Args:
        dataset: The training dataset as built from the config.
        exclusion_list: ``data.exclude_identities`` (None: keep every identity).
        verify_images: ``data.verify_images``, passed to :meth:`FaceDataset.find_bad`.
        on_bad_image: ``error`` stops at the first bad sample, naming it; ``skip`` drops and records them.
        label_noise: ``data.label_noise``, applied to the training labels only.
        kind: What the records call the dataset (``identity_folders``, ``RecordIOFaces``).
        where: Where the data is (``data.train_root``), for messages and records.

    Raises:
        ValueError: Bad labels, or an exclusion list for a dataset without identity names.
        OSError: Bad samples with ``on_bad_image=error``; the message names the first.
    """
    labels = check_labels(dataset)
    classes = None if dataset.classes is None else list(dataset.classes)
    num_classes = int(dataset.num_classes)
    index = np.arange(len(labels), dtype=np.int64)
    summary: dict[str, Any] = {
        "source": {"kind": kind, "train_root": where},
        "scanned": {"identities": num_classes, "images": len(labels)},
        "exclude_identities": None,
    }
    if exclusion_list is not None:
        if classes is None:
            raise ValueError(
                f"data.exclude_identities={exclusion_list.spec!r} needs identity names, but data.dataset "
                f"{type(dataset).__name__} has no .classes (RecordIO packs store numeric labels only): remove the "
                "identities before packing (e.g. from identity folders with data.exclude_identities, then pack)"
            )
        ex = exclude_identities(classes, labels, exclusion_list.identities)
        summary["exclude_identities"] = {
            "list": exclusion_list.spec,
            "file": str(exclusion_list.path),
            "listed": len(exclusion_list.identities),
            "removed": [{"identity": name, "images": n} for name, n in ex.removed],
            "not_in_data": ex.not_found,
            "images_removed": int(sum(n for _, n in ex.removed)),
        }
        log.info(
            "data.exclude_identities=%s: removed %d identities (%d images); %d listed ids are not in the data",
            exclusion_list.spec, len(ex.removed), summary["exclude_identities"]["images_removed"], len(ex.not_found),
        )  # fmt: skip
        index, labels, classes, num_classes = index[ex.keep], ex.labels, ex.classes, len(ex.classes)

    data = TrainingData(dataset, labels, classes, num_classes, summary)
    index = _drop_bad(data, index, verify_images, on_bad_image, where)

    labels, image_index, record = apply_label_noise(data.labels, label_noise, data.num_classes)
    summary["label_noise"] = {
        "kind": label_noise.kind,
        "rate": label_noise.rate,
        "seed": label_noise.seed,
        "num_corrupted": len(record),
        "file": NOISE_FILE if label_noise.active else None,
    }
    if label_noise.active:
        data.noise, data.noise_names = record, dataset.sample_names(index)  # the noise record's index space
    index = index[image_index]  # outlier noise: another image at the same position
    data.labels = labels
    untouched = np.array_equal(index, np.arange(len(dataset))) and np.array_equal(labels, dataset.labels)
    data.train_set = dataset if untouched else dataset.select(index, labels, data.classes)
    return data


def _drop_bad(data: TrainingData, index: np.ndarray, check: str, on_bad_image: str, where: str) -> np.ndarray:
    """``data.verify_images`` over the kept samples; ``on_bad_image`` stops or drops (and records) the bad ones."""
    dataset = data.train_set
    started = time.perf_counter()
    bad = dataset.find_bad(index, check)
    seconds = time.perf_counter() - started
    if bad is None:  # the dataset checks its own records when it reads them
        if check != "none":
            log.info("data.verify_images=%s applies to image files; %s checks its own records",
                     check, type(dataset).__name__)  # fmt: skip
        data.summary["bad_images"] = {
            "check": f"none ({type(dataset).__name__} checks its own records)",
            "policy": on_bad_image,
            "count": 0,
        }
        return index
    if bad and on_bad_image == "error":
        i, reason = bad[0]
        raise OSError(
            f"{len(bad)} unreadable training image(s) under {where} (data.verify_images={check}); first: "
            f"{dataset.describe(int(index[i]))}: {reason}. Fix or remove them, or set data.on_bad_image=skip to "
            "skip them and list them in the run directory"
        )
    emptied: list[str] = []
    if bad:
        mask = np.ones(len(index), dtype=bool)
        mask[[i for i, _ in bad]] = False
        data.bad = [(dataset.describe(int(index[i])), reason) for i, reason in bad]
        index = index[mask]
        if data.classes is None:  # unnamed identities: the label space stays as the dataset declared it
            data.labels = data.labels[mask]
        else:
            data.classes, data.labels, emptied = drop_empty_classes(data.classes, data.labels[mask])
            data.num_classes = len(data.classes)
        log.warning(
            "data.on_bad_image=skip: skipped %d unreadable training image(s)%s; listed in %s of the run directory",
            len(bad), f" ({len(emptied)} identities left without images: {emptied[:5]})" if emptied else "",
            BAD_IMAGES_FILE,
        )  # fmt: skip
    data.summary["bad_images"] = {
        "check": check,
        "policy": on_bad_image,
        "seconds": round(seconds, 3),
        "count": len(bad),
        "identities_emptied": emptied,
        "file": BAD_IMAGES_FILE if bad else None,
    }
    return index


def write_records(directory: str | Path, data: TrainingData, verify_images: str) -> None:
    """Write ``data_exclusions.json`` (+ ``label_noise.csv``, ``bad_images.txt`` when they apply) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summary = {**data.summary, "num_classes": data.num_classes, "num_images": len(data.labels)}
    write_json_atomic(directory / EXCLUSIONS_FILE, summary)
    if data.noise is not None:
        write_noise_csv(directory / NOISE_FILE, data.noise, data.noise_names)
    if data.bad:
        with atomic_write(directory / BAD_IMAGES_FILE, "w") as f:
            f.write(
                f"# {len(data.bad)} training images skipped (data.verify_images={verify_images}, "
                "data.on_bad_image=skip): path<TAB>reason\n" + "".join(f"{p}\t{r}\n" for p, r in data.bad)
            )
    log.info("data records written to %s", directory)
