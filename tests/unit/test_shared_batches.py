"""Reused worker batch buffers (facetrain.data.shared_batches): batches stay intact while the main process holds
them, segments are reused once it has dropped them, under both torch sharing strategies."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp
from torch.utils.data import DataLoader

from facetrain.data import shared_batches
from facetrain.data.batches import collate_batch
from facetrain.data.image_files import LabelledImages
from facetrain.data.shared_batches import BufferPool, TrackedBatch
from facetrain.data.transforms import Uint8CHW

COUNT, BATCH, SIZE = 96, 8, 8


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """``COUNT`` PNGs whose every pixel of image i is ``(i, 255 - i, i // 2)``, so a batch names its own indices."""
    root = tmp_path_factory.mktemp("shared_batches")
    paths = []
    for i in range(COUNT):
        path = root / f"{i:03d}.png"
        rgb = np.empty((SIZE, SIZE, 3), np.uint8)
        rgb[...] = (i, 255 - i, i // 2)
        assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    return np.array(paths)


@pytest.fixture(params=["file_descriptor", "file_system"])
def strategy(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both torch sharing strategies (forked workers inherit the setting)."""
    before = tmp.get_sharing_strategy()
    tmp.set_sharing_strategy(request.param)
    yield request.param
    tmp.set_sharing_strategy(before)


def loader(paths: np.ndarray, workers: int = 1, buffers: int = 4, **kwargs) -> DataLoader:
    dataset = LabelledImages(paths, np.arange(len(paths), dtype=np.int64), Uint8CHW(), worker_buffers=buffers)
    kwargs.setdefault("collate_fn", collate_batch)
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers, shuffle=True, **kwargs)


def expected(labels: torch.Tensor) -> torch.Tensor:
    """The images the labels name (channel planes filled with i, 255 - i, i // 2)."""
    i = labels.to(torch.int64)
    planes = torch.stack([i, 255 - i, i // 2], dim=1).to(torch.uint8)
    return planes[:, :, None, None].expand(-1, -1, SIZE, SIZE)


def assert_intact(images: torch.Tensor, labels: torch.Tensor) -> None:
    assert torch.equal(images, expected(labels)), f"batch of labels {labels.tolist()} was overwritten"


def segment(tensor: torch.Tensor) -> object:
    """Identity of the shared-memory segment behind a batch received in the main process: the address of the main
    process's lasting mapping for a pooled batch, else the shared segment's inode or name."""
    storage = tensor.untyped_storage()
    if not storage.is_shared():
        return ("pooled", tensor.data_ptr())
    if tmp.get_sharing_strategy() == "file_system":
        return storage._share_filename_cpu_()[1]
    return os.fstat(storage._share_fd_cpu_()[0]).st_ino


# ---------------------------------------------------------------------------------------------------------------
# Through a DataLoader
# ---------------------------------------------------------------------------------------------------------------


def test_dropped_batches_reuse_the_workers_segments(images: np.ndarray, strategy: str) -> None:
    segments = []
    for _ in range(2):
        for images_, labels in loader(images, buffers=4):
            assert_intact(images_, labels)
            segments.append(segment(images_))
    assert len(segments) == 2 * COUNT // BATCH
    # One worker process per epoch (not persistent): at most 4 segments each, against 24 batches.
    assert len(set(segments)) <= 8, f"{len(set(segments))} segments for {len(segments)} batches: nothing reused"


def test_batches_held_by_the_main_process_are_never_overwritten(images: np.ndarray, strategy: str) -> None:
    data = loader(images, buffers=2, persistent_workers=True)
    held = list(data)  # every batch kept: the worker must fall back to new segments after its 2 slots
    for images_, labels in held:
        assert_intact(images_, labels)
    assert len({segment(b[0]) for b in held}) == len(held)
    again = list(data)  # held batches still alive while the next epoch runs through the same worker
    for images_, labels in held + again:
        assert_intact(images_, labels)


def test_a_view_keeps_its_segment_taken(images: np.ndarray) -> None:
    """Only the storage's death frees a slot: a kept slice of a dropped batch holds it, and so does its labels
    tensor alone (a separate tensor on the same storage, not a view of the images)."""
    data = loader(images, buffers=2, persistent_workers=True)
    slices, labels_only = [], []
    for epoch in range(3):
        for step, (images_, labels) in enumerate(data):
            if epoch == 0 and step == 0:  # the first two batches fill both slots
                slices.append((images_[1:3], labels[1:3].clone()))
            elif epoch == 0 and step == 1:
                labels_only.append((labels, labels.clone()))
    for view, labels in slices:
        assert_intact(view, labels)
    for kept, copy in labels_only:
        assert torch.equal(kept, copy), "a batch's storage was reused while its labels tensor was alive"


def test_several_workers_with_batches_held_and_dropped(images: np.ndarray) -> None:
    data = loader(images, workers=2, buffers=2, persistent_workers=True)
    held = []
    for _ in range(3):
        for step, (images_, labels) in enumerate(data):
            assert_intact(images_, labels)
            if step % 3 == 0:
                held.append((images_, labels))
    for images_, labels in held:
        assert_intact(images_, labels)


def test_no_buffers_makes_a_segment_per_batch(images: np.ndarray) -> None:
    batches = [(segment(x), x, y) for x, y in loader(images, buffers=0)]
    for _, x, y in batches:
        assert_intact(x, y)
    assert len({s for s, _, _ in batches}) == len(batches)


def test_default_collate_copies_and_never_releases(images: np.ndarray) -> None:
    """Another ``collate_fn`` gets plain samples; the slots it never hands back only mean new segments."""
    data = loader(images, buffers=2, collate_fn=None, persistent_workers=True)
    for _ in range(2):
        for images_, labels in data:
            assert_intact(images_, labels)


def test_in_process_loading_uses_ordinary_memory(images: np.ndarray) -> None:
    for images_, labels in loader(images, workers=0):
        assert_intact(images_, labels)
        assert not images_.is_shared()


# ---------------------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------------------


def test_pool_takes_free_slots_reuses_grows_and_falls_back() -> None:
    pool = BufferPool(slots=2)
    a, slot_a = pool.take(100)
    b, slot_b = pool.take(100)
    assert (slot_a, slot_b) == (0, 1) and pool.flags.tolist() == [1, 1, 0, 0, 0]
    c, slot_c = pool.take(100)  # both held: a one-off segment, no slot
    assert slot_c is None and c.data_ptr() not in (a.data_ptr(), b.data_ptr()) and c.is_shared()
    pool.flags[1] = 0  # what the main process does when b's batch dies
    again, slot = pool.take(50)  # smaller: the same segment
    assert slot == 1 and again.data_ptr() == b.data_ptr()
    pool.flags[1] = 0
    bigger, slot = pool.take(200)  # larger: a new segment in the slot
    assert slot == 1 and bigger.nbytes() >= 200 and bigger.data_ptr() != b.data_ptr()
    assert (pool.reused, pool.fresh) == (1, 4)
    with pytest.raises(ValueError, match="at least one slot"):
        BufferPool(slots=0)


def test_no_pool_outside_a_worker() -> None:
    assert shared_batches.worker_pool() is None


def pooled_batch(pool: BufferPool, count: int = 2) -> TrackedBatch:
    """A batch in a slot of ``pool``, laid out as ``LabelledImages.__getitems__`` writes it, labels 0..count-1."""
    offset = -(-count * 12 // 8) * 8  # labels 8-byte aligned
    nbytes = offset + 8 * count
    storage, slot = pool.take(nbytes)
    assert slot is not None
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)[:nbytes]
    images, labels = buffer[: count * 12].view(count, 3, 2, 2), buffer[offset:].view(torch.int64)
    images.fill_(7)
    labels.copy_(torch.arange(count))
    return TrackedBatch(images, labels, pool, slot)


def receive(batch: TrackedBatch) -> tuple[list[torch.Tensor], tuple]:
    """What unpickling the batch in the main process returns, and the pickled arguments."""
    func, args = batch.__reduce__()
    return func(*args), args


def test_arrival_maps_once_and_death_of_every_view_releases() -> None:
    pool = BufferPool(slots=3)
    first, args = receive(pooled_batch(pool))
    assert args[4] is not None and args[5] is not None  # the first batch carries the segment and the flags
    assert first[1].tolist() == [0, 1] and (first[0] == 7).all()
    assert pool.flags.tolist() == [1, 0, 0, 1, 0, 0, 1]  # slot 0 held; its generation 1 and the flags mapped
    view = first[0][1]
    del first, args
    assert pool.flags[0] == 1  # a view still holds it
    del view
    assert pool.flags[0] == 0
    second, args = receive(pooled_batch(pool))
    assert args[4] is None and args[5] is None  # the same segment again: only its coordinates travel
    labels = second[1]
    del second
    assert pool.flags[0] == 1  # the labels tensor alone holds the batch too
    del labels
    assert pool.flags[0] == 0 and (pool.reused, pool.fresh) == (1, 1)


def test_a_grown_segment_is_sent_again() -> None:
    pool = BufferPool(slots=1)
    small, _ = receive(pooled_batch(pool, count=2))
    del small
    big, args = receive(pooled_batch(pool, count=5))
    assert args[2] == 2 and args[4] is not None  # generation 2: a new segment, carried once
    assert big[1].tolist() == list(range(5))
    del big
    again, args = receive(pooled_batch(pool, count=5))
    assert args[4] is None


def test_a_batch_from_an_unmapped_segment_is_refused() -> None:
    pool = BufferPool(slots=1)
    batch = pooled_batch(pool)
    func, args = batch.__reduce__()
    token, slot, generation, layout, _, flags = args
    with pytest.raises(RuntimeError, match="generation 1, mapped None"):
        func(token, slot, generation, layout, None, flags)


def test_collate_batch_tracks_only_pooled_batches(images: np.ndarray) -> None:
    dataset = LabelledImages(images, np.arange(COUNT, dtype=np.int64), Uint8CHW())
    batch = collate_batch(dataset.__getitems__([0, 5]))  # in this process: ordinary memory, no slot
    assert type(batch) is list and batch[1].tolist() == [0, 5]
    assert_intact(*batch)


def test_spawned_workers(images: np.ndarray) -> None:
    """Spawned workers (macOS, Windows, CUDA users) build their pool from scratch and follow the same protocol."""
    data = loader(images, buffers=2, persistent_workers=True, multiprocessing_context="spawn")
    held = []
    for _ in range(2):
        for step, (images_, labels) in enumerate(data):
            assert_intact(images_, labels)
            if step % 4 == 0:
                held.append((images_, labels))
    for images_, labels in held:
        assert_intact(images_, labels)


def test_mappings_of_exited_workers_are_dropped_when_a_new_worker_arrives() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    dead, alive = BufferPool(slots=1), BufferPool(slots=1)
    dead.token = (exited.pid, 1)  # a worker that has exited (its id is not reused this quickly)
    batch, _ = receive(pooled_batch(dead))
    del batch
    assert dead.token in shared_batches._flags and (dead.token, 0) in shared_batches._segments
    batch, _ = receive(pooled_batch(alive))  # a new worker registers: the exited one's mappings go
    del batch
    assert dead.token not in shared_batches._flags and (dead.token, 0) not in shared_batches._segments
    assert alive.token in shared_batches._flags and (alive.token, 0) in shared_batches._segments
    batch, _ = receive(pooled_batch(BufferPool(slots=1)))
    assert alive.token in shared_batches._flags  # this process (the "worker" here) is alive: kept
