"""Datasets of image files: the identity-folder training set (CASIA-WebFace layout) and the evaluation image list.

``root/<identity>/<image>`` is the layout of CASIA-WebFace, VGGFace2 and the synthetic set. :class:`IdentityFolders`
scans it into a :class:`~facetrain.data.index.PathTable` (a compact index that DataLoader workers share without
copying) and reads each image with the one decoder (:func:`facetrain.data.decode.read_rgb`); with a plain
:class:`~facetrain.data.transforms.Uint8CHW` transform it decodes whole batches (:mod:`facetrain.data.batches`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.batches import CollatedBatch, decode_batch
from facetrain.data.checks import ON_BAD_IMAGE, find_bad_images
from facetrain.data.dataset import FaceDataset, Sample
from facetrain.data.decode import IMAGE_EXTENSIONS, read_rgb
from facetrain.data.index import PathTable
from facetrain.data.shared_batches import DEFAULT_SLOTS
from facetrain.data.transforms import Transform, Uint8CHW, to_tensor

log = logging.getLogger(__name__)


def scan_identity_folders(root: str | os.PathLike) -> tuple[list[str], PathTable, np.ndarray]:
    """List a CASIA-WebFace style tree ``root/<identity>/<image>``.

    Identities are the sorted sub-folder names; labels are their positions in that order. Paths are a
    :class:`~facetrain.data.index.PathTable` (UTF-8 bytes + offsets) and labels an int64 array rather than Python
    lists, so a multi-million-image index stays small and DataLoader workers do not copy it on access (reference
    counting touches every Python object, which un-shares fork's copy-on-write pages).

    Returns:
        ``(classes, paths, labels)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No identity folder with images was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data root {str(root)!r} does not exist or is not a directory")
    classes: list[str] = []
    counts: list[int] = []

    def relative_paths() -> Iterator[str]:
        # A generator: one folder's file names at a time, streamed into the PathTable's byte buffer.
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            files = sorted(f.name for f in os.scandir(entry.path) if f.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                continue
            classes.append(entry.name)
            counts.append(len(files))
            for name in files:
                yield f"{entry.name}/{name}"

    paths = PathTable.from_relative(os.fspath(root), relative_paths())
    if not classes:
        raise ValueError(f"training data root {str(root)!r} holds no <identity>/<image> folders with images")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return classes, paths, labels


class LabelledImages(FaceDataset):
    """``(image, label)`` pairs from parallel arrays of paths and integer labels.

    Args:
        paths: Image paths: a :class:`~facetrain.data.index.PathTable` or NumPy string array (see
            :func:`scan_identity_folders` for why not a list).
        labels: int64 labels, same length.
        transform: albumentations pipeline (or :class:`Uint8CHW`).
        on_bad_image: ``"error"`` raises naming the file. ``"skip"`` returns the next readable sample instead
            (with *its* label, so image and label still match), logs a warning naming the bad file and appends it
            to ``bad_image_log``. The DataModule's check in ``setup`` normally removes bad files before this point;
            this is the fallback for damage the header check cannot see.
        bad_image_log: File that skipped images are appended to (``<run dir>/bad_images.txt``), or None.
        worker_buffers: Shared-memory segments each DataLoader worker reuses for whole uint8 batches
            (:mod:`facetrain.data.shared_batches`); 0 creates a new segment per batch.
        classes: Identity name of each label, or None; ``num_classes`` is their count, else ``max(labels) + 1``.
    """

    def __init__(
        self,
        paths: PathTable | np.ndarray,
        labels: np.ndarray,
        transform: Transform | None = None,
        on_bad_image: str = "error",
        bad_image_log: str | os.PathLike | None = None,
        worker_buffers: int = DEFAULT_SLOTS,
        classes: list[str] | None = None,
    ) -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
        if len(paths) != len(labels):
            raise ValueError(f"LabelledImages: {len(paths)} paths but {len(labels)} labels")
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.bad_image_log = None if bad_image_log is None else os.fspath(bad_image_log)
        self._reported: set[str] = set()
        self.worker_buffers = int(worker_buffers)
        self.classes = classes
        self.num_classes = len(classes) if classes is not None else int(np.max(labels, initial=-1)) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        image, source = self._load(index)
        return to_tensor(self.transform, image), int(self.labels[source])

    @property
    def fetches_batches(self) -> bool:
        """Whether :meth:`__getitems__` builds whole uint8 batches (plain :class:`Uint8CHW`, no CPU pipeline)."""
        return type(self.transform) is Uint8CHW and self.transform.pre is None

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def sample_names(self, index: np.ndarray) -> PathTable | np.ndarray:
        return self.paths[index]

    def find_bad(self, index: np.ndarray, check: str) -> list[tuple[int, str]]:
        """Header or decode check of the files ``index`` (:func:`facetrain.data.checks.find_bad_images`)."""
        return find_bad_images(self.paths[index], check)

    def select(self, index: np.ndarray, labels: np.ndarray, classes: list[str] | None) -> LabelledImages:
        """The files ``index`` with ``labels``: a path list again, so a file skipped at load time is replaced by the
        next file *of the view* with its label, and image and label still match."""
        return LabelledImages(
            self.paths[index], labels, self.transform, self.on_bad_image, self.bad_image_log, self.worker_buffers,
            classes,
        )  # fmt: skip

    def __getitems__(self, indices: Sequence[int]) -> CollatedBatch | list[Sample]:
        """A whole batch at once: what the DataLoader's fetcher calls instead of ``__getitem__`` per sample.

        With a plain :class:`Uint8CHW` transform it decodes every image straight into one preallocated uint8
        ``B×3×H×W`` array (shared memory in a worker, as ``default_collate`` allocates it) and returns a
        :class:`CollatedBatch`, so no per-sample tensors and no stacking copy; :func:`collate_batch` passes it on.
        The images and labels are identical to ``default_collate([self[i] for i in indices])``, and bad files are
        handled the same way (``on_bad_image``). Any other transform returns ``[self[i] for i in indices]``,
        what the fetcher does without this method.

        Raises:
            ValueError: An image has a different size than the batch's first; the message names both files.
        """
        if not self.fetches_batches:
            return [self[i] for i in indices]
        return decode_batch(indices, self._load, lambda i: repr(str(self.paths[i])), self.labels, self.worker_buffers)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded RGB image for sample ``index`` and the index it really came from (another one when skipped)."""
        try:
            return read_rgb(self.paths[index]), index
        except OSError as error:
            if self.on_bad_image == "error":
                raise OSError(
                    f"{error} (training sample {index}; data.on_bad_image=skip skips and records it)"
                ) from error
            return self._substitute(index, error)

    def _substitute(self, index: int, error: OSError) -> tuple[np.ndarray, int]:
        # The next readable sample keeps the batch full; a bounded search so a folder of garbage fails loudly.
        self._report(str(self.paths[index]), error)
        for step in range(1, 17):
            other = (index + step) % len(self.paths)
            try:
                return read_rgb(self.paths[other]), other
            except OSError as other_error:
                self._report(str(self.paths[other]), other_error)
        raise OSError(f"16 consecutive unreadable training images after sample {index}; last: {error}")

    def _report(self, path: str, error: OSError) -> None:
        if path in self._reported:  # once per file and worker, not once per epoch
            return
        self._reported.add(path)
        log.warning("skipping unreadable training image at load time: %s", error)
        if self.bad_image_log is not None:
            reason = str(error).replace("\t", " ").replace("\n", " ")
            # One short O_APPEND write per line: lines from several workers do not interleave.
            with open(self.bad_image_log, "a") as f:
                f.write(f"{path}\t{reason} [at load time, pid {os.getpid()}]\n")


class IdentityFolders(LabelledImages):
    """The training images of an identity-folder tree ``root/<identity>/<image>`` (:func:`scan_identity_folders`).

    The data module's default dataset (``data.dataset: null``); its configuration comes from the ``data.*`` keys.

    Args:
        root: Tree root (``data.train_root``).
        transform: Per-sample pipeline.
        on_bad_image: What a file that fails to decode at load time does (see :class:`LabelledImages`).
        bad_image_log: File that images skipped at load time are appended to, or None.
        worker_buffers: Reused shared-memory batch buffers per DataLoader worker.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No identity folder with images was found.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        on_bad_image: str = "error",
        bad_image_log: str | os.PathLike | None = None,
        worker_buffers: int = DEFAULT_SLOTS,
    ) -> None:
        self.root = Path(root)
        classes, paths, labels = scan_identity_folders(self.root)
        super().__init__(paths, labels, transform, on_bad_image, bad_image_log, worker_buffers, classes)

    def __repr__(self) -> str:
        return f"IdentityFolders({str(self.root)!r}, identities={self.num_classes}, images={len(self)})"


class ImageList(Dataset):
    """Images only, in the order given: what the evaluation callbacks embed."""

    def __init__(self, paths: Sequence[str] | np.ndarray, transform: Transform | None = None) -> None:
        self.paths = np.asarray(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.transform, read_rgb(self.paths[index]))
