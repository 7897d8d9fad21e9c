"""The uint8 batched fetch: decode a whole batch into one ``B×3×H×W`` array and pass it on without a copy.

A dataset whose transform is a plain :class:`~facetrain.data.transforms.Uint8CHW` builds its batches here
(:func:`decode_batch`), and the DataLoader's ``collate_fn`` (:func:`collate_batch`) hands them on as
``[images, labels]``. In a DataLoader worker the batch lives in one of the worker's reused shared-memory segments
(:mod:`facetrain.data.shared_batches`, the reuse protocol behind this module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate

from facetrain.data.shared_batches import DEFAULT_SLOTS, BufferPool, TrackedBatch, worker_pool


def _empty_batch(
    count: int, height: int, width: int, slots: int = DEFAULT_SLOTS
) -> tuple[torch.Tensor, torch.Tensor, BufferPool | None, int | None]:
    """Uninitialised ``count×3×height×width`` uint8 images and ``count`` int64 labels, both views of one storage.

    In a DataLoader worker the storage is shared memory, so sending the batch to the main process copies nothing.
    With ``slots > 0`` it is one of the worker's reused segments (:mod:`facetrain.data.shared_batches`; the pool and
    slot are returned for :func:`collate_batch`), which saves creating, zero-filling, passing and mapping a new
    segment per batch; with 0, a new segment. Outside a worker it is ordinary memory.
    """
    image_bytes = count * 3 * height * width
    offset = -(-image_bytes // 8) * 8  # int64 labels start 8-byte aligned
    nbytes = offset + 8 * count
    pool = worker_pool(slots) if slots > 0 else None  # None outside a worker
    if pool is not None:
        storage, slot = pool.take(nbytes)
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)[:nbytes]
    elif get_worker_info() is not None:
        buffer, slot = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes)), None
    else:
        buffer, slot = torch.empty(nbytes, dtype=torch.uint8), None
    images = buffer[:image_bytes].view(count, 3, height, width)
    return images, buffer[offset:nbytes].view(torch.int64), pool, slot


class CollatedBatch(Sequence):
    """A batch :func:`decode_batch` built already collated: ``B×3×H×W`` uint8 images, int64 labels.

    :func:`collate_batch` returns it as ``[images, labels]`` (what ``default_collate`` makes of ``(image, label)``
    samples) without touching the data. It also reads as the sequence of ``(image, int label)`` samples, so a
    DataLoader with the default ``collate_fn`` still gets the same (re-stacked) batch, only slower.
    """

    __slots__ = ("images", "labels", "pool", "slot")

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, pool: BufferPool | None = None, slot: int | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.pool, self.slot = pool, slot  # the worker's reusable segment the batch lives in, if any

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.images[i], int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        return (self[i] for i in range(len(self)))


def collate_batch(batch: Any) -> Any:
    """DataLoader ``collate_fn``: a :class:`CollatedBatch` as ``[images, labels]``, else ``default_collate``.

    A batch in a reused worker segment becomes a :class:`~facetrain.data.shared_batches.TrackedBatch`: the same
    two-element list, which crosses to the main process as the segment's coordinates and arrives on the main
    process's lasting mapping of it; the segment is released for reuse when the batch dies there.
    """
    if isinstance(batch, CollatedBatch):
        if batch.pool is not None and batch.slot is not None:
            return TrackedBatch(batch.images, batch.labels, batch.pool, batch.slot)
        return [batch.images, batch.labels]
    return default_collate(batch)


def decode_batch(
    indices: Sequence[int],
    load: Callable[[int], tuple[np.ndarray, int]],
    describe: Callable[[int], str],
    labels: np.ndarray,
    worker_buffers: int = DEFAULT_SLOTS,
) -> CollatedBatch | list:
    """Decode a batch straight into one uint8 ``B×3×H×W`` array: the batched fetch of the uint8 training path.

    No per-sample tensors and no stacking copy: each decoded ``H×W×3`` image is split into the batch's CHW planes.
    In a DataLoader worker the array is one of the worker's reused shared-memory buffers (``worker_buffers``).

    Args:
        indices: Sample indices of the batch.
        load: ``load(index) -> (RGB image, index it really came from)`` (another one when a bad file was skipped).
        describe: Names sample ``index`` in an error message (its path, or pack, key and offset).
        labels: Label of every sample, indexed by the index ``load`` reports.
        worker_buffers: Reused buffers per worker (0: a new shared-memory segment per batch).

    Returns:
        A :class:`CollatedBatch`, or ``[]`` for no indices.

    Raises:
        ValueError: An image has a different size than the batch's first; the message names both.
    """
    out: np.ndarray | None = None
    sources = np.empty(len(indices), dtype=np.int64)
    first = ""
    for position, index in enumerate(indices):
        image, source = load(int(index))
        if out is None:
            height, width = image.shape[:2]
            images, batch_labels, pool, slot = _empty_batch(len(indices), height, width, worker_buffers)
            out = images.numpy()
            first = describe(source)
        elif image.shape != (height, width, 3):
            raise ValueError(
                f"training image {describe(source)} is {image.shape[1]}x{image.shape[0]} but {first}, the first of "
                f"its batch, is {width}x{height}: uint8 batches need images of one size (resize the data, or resize "
                "in data.uint8_transform)"
            )
        cv2.split(image, list(out[position]))  # HWC -> the batch's CHW planes, no intermediate array
        sources[position] = source
    if out is None:  # no indices
        return []
    batch_labels.numpy()[:] = np.asarray(labels)[sources]
    return CollatedBatch(images, batch_labels, pool, slot)
