"""The declared interface of a training dataset, and the relabelled view the data pipeline makes of one.

Every training dataset subclasses :class:`FaceDataset`: identity folders
(:class:`~facetrain.data.image_files.IdentityFolders`), RecordIO packs (:class:`~facetrain.data.recordio.RecordIOFaces`)
and a user's own (``data.dataset``). The data module and the sampler read only what is declared here; the optional
capabilities (names, batched fetch, per-sample seeding, start-up checks, a cheaper view) have defaults, so a new
dataset implements ``__len__``, ``__getitem__``, ``labels`` and ``num_classes`` and nothing is probed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.batches import CollatedBatch
from facetrain.data.shared_batches import DEFAULT_SLOTS
from facetrain.data.transforms import Transform

Sample = tuple[torch.Tensor, int]


class FaceDataset(Dataset, ABC):
    """``(image tensor, label)`` samples of identities ``0 .. num_classes-1``; images by ``to_tensor(transform, rgb)``.

    Attributes:
        labels: int64 label of every sample (1-D, one per sample).
        num_classes: Number of identities.
        classes: Identity name of each label, or None when the data stores numeric labels only (then
            ``data.exclude_identities`` cannot apply).
        transform: Per-sample pipeline (albumentations, or :class:`~facetrain.data.transforms.Uint8CHW`).
        worker_buffers: Reused shared-memory batch buffers per DataLoader worker for the uint8 batched fetch
            (:mod:`facetrain.data.batches`); the data module sets ``data.worker_buffers``.
        bad_image_log: File that samples skipped at load time (``data.on_bad_image=skip``) are appended to; the data
            module sets ``<run dir>/bad_images.txt`` once it knows the run directory. Datasets that never skip a
            sample ignore it.
    """

    labels: np.ndarray
    num_classes: int
    classes: list[str] | None = None
    transform: Transform | None = None
    worker_buffers: int = DEFAULT_SLOTS
    bad_image_log: str | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Any: ...

    @property
    def fetches_batches(self) -> bool:
        """Whether :meth:`__getitems__` builds whole uint8 batches (:class:`~facetrain.data.batches.CollatedBatch`)."""
        return False

    def __getitems__(self, indices: Sequence[int]) -> CollatedBatch | list[Any]:
        """A whole batch: what the DataLoader's fetcher calls; by default sample by sample."""
        return [self[i] for i in indices]

    @property
    def seeds_samples(self) -> bool:
        """Whether the CPU transform is random and is re-seeded before each sample (exact resume, see
        :class:`~facetrain.data.sampler.EpochSeeded`); albumentations pipelines say so by ``set_random_seed``."""
        return getattr(self.transform, "set_random_seed", None) is not None

    def seed_sample(self, seed: int) -> None:
        """Seed the transform for the next sample (called only when :attr:`seeds_samples`)."""
        self.transform.set_random_seed(seed)  # type: ignore[union-attr]

    def describe(self, index: int) -> str:
        """Names sample ``index`` in messages and records (a path, or a pack and offset)."""
        return f"sample {index} of {type(self).__name__}"

    def sample_names(self, index: np.ndarray) -> Sequence[str] | None:
        """Names of the samples ``index`` for ``label_noise.csv``, or None (the file then lists indices only)."""
        return None

    def find_bad(self, index: np.ndarray, check: str) -> list[tuple[int, str]] | None:
        """Start-up check (``data.verify_images=check``) of the samples ``index``.

        Returns:
            ``(position in index, reason)`` of every unusable sample, or None when the dataset checks its own
            records when it is read (the default: packs validate their index when they are opened).
        """
        return None

    def select(self, index: np.ndarray, labels: np.ndarray, classes: list[str] | None) -> FaceDataset:
        """The training view: sample ``i`` is this dataset's sample ``index[i]`` with label ``labels[i]``."""
        return IndexedDataset(self, index, labels, classes)


class IndexedDataset(FaceDataset):
    """A view of another :class:`FaceDataset`: sample ``i`` is ``base[index[i]]``'s image with ``labels[i]``.

    This is how identity exclusion, outlier noise (a different image under the same label) and symmetric noise (a
    different label) reach datasets that are not path lists, such as RecordIO packs.

    Args:
        base: The dataset viewed.
        index: Base sample of each position.
        labels: Label of each position.
        classes: Identity names of the new labels; ``num_classes`` is their count. None for unnamed identities,
            whose label space the pipeline never changes (exclusion needs names): ``num_classes`` is the base's.
    """

    def __init__(
        self, base: FaceDataset, index: np.ndarray, labels: np.ndarray, classes: list[str] | None = None
    ) -> None:
        if len(index) != len(labels):
            raise ValueError(f"IndexedDataset: {len(index)} indices but {len(labels)} labels")
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes
        self.num_classes = len(classes) if classes is not None else base.num_classes

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        image, _ = self.base[int(self.index[i])]
        return image, int(self.labels[i])

    @property
    def transform(self) -> Transform | None:  # type: ignore[override]
        """The base dataset's transform (what :class:`~facetrain.data.sampler.EpochSeeded` seeds)."""
        return self.base.transform

    @property
    def seeds_samples(self) -> bool:
        return self.base.seeds_samples

    def seed_sample(self, seed: int) -> None:
        self.base.seed_sample(seed)

    @property
    def fetches_batches(self) -> bool:
        """Whether :meth:`__getitems__` hands whole uint8 batches on from the base dataset."""
        return self.base.fetches_batches

    def describe(self, index: int) -> str:
        return self.base.describe(int(self.index[index]))

    def __getitems__(self, indices: Sequence[int]) -> CollatedBatch | list[Sample]:
        """The base dataset's batched fetch of the mapped indices, relabelled; else sample by sample."""
        if not self.fetches_batches:
            return [self[i] for i in indices]
        positions = np.asarray(indices, dtype=np.int64)
        batch = self.base.__getitems__(self.index[positions].tolist())
        if isinstance(batch, CollatedBatch):
            batch.labels.numpy()[:] = self.labels[positions]
            return batch
        return [(image, int(label)) for (image, _), label in zip(batch, self.labels[positions], strict=True)]
