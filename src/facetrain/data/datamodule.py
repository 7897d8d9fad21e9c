"""The training DataModule: any CASIA-WebFace style identity-folder tree, with albumentations transforms."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from facetrain.data.images import LabelledImages, Transform, scan_identity_folders

log = logging.getLogger(__name__)


class DataSource(Protocol):
    """Something that makes a dataset exist on disk before it is read (e.g. the synthetic generator)."""

    def ensure(self) -> object: ...


class FaceDataModule(pl.LightningDataModule):
    """Identity-folder training data (``train_root/<identity>/<image>``).

    The class count comes from the data, never from the config: it is the number of identity folders that hold
    at least one image.

    Args:
        train_root: Root of the identity-folder tree.
        train_transform: albumentations pipeline for training images (augmentation, normalisation, ToTensorV2).
        eval_transform: Deterministic pipeline for evaluation images (normalisation, ToTensorV2); the evaluation
            callbacks use the same one so train and test images are normalised alike.
        batch_size: Images per device and step.
        num_workers: DataLoader worker processes.
        source: Optional generator whose ``ensure()`` creates the data first (the synthetic dataset).
        pin_memory: Pin host memory (useful on GPU).
    """

    def __init__(
        self,
        train_root: str,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        source: DataSource | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"data.batch_size must be >= 2 (BatchNorm needs two samples), got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.train_root = Path(train_root)
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.source = source
        self.pin_memory = pin_memory
        self._index: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def _scan(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        if self._index is None:
            if self.source is not None:
                self.source.ensure()
            self._index = scan_identity_folders(self.train_root)
            classes, paths, _ = self._index
            log.info("training data %s: %d identities, %d images", self.train_root, len(classes), len(paths))
        return self._index

    @property
    def num_classes(self) -> int:
        """Number of identities in the training tree (scans it on first use)."""
        return len(self._scan()[0])

    @property
    def num_images(self) -> int:
        return len(self._scan()[1])

    def prepare_data(self) -> None:
        if self.source is not None:
            self.source.ensure()

    def setup(self, stage: str | None = None) -> None:
        _, paths, labels = self._scan()
        if len(paths) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} exceeds the {len(paths)} training images in {self.train_root}"
            )
        self.train_set = LabelledImages(paths, labels, self.train_transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,  # a last batch of one would break BatchNorm
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
