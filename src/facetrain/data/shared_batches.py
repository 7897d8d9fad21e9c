"""Shared-memory batch buffers that a DataLoader worker reuses once the main process has let go of them.

A DataLoader worker hands each batch to the main process in shared memory. ``default_collate`` creates a new
segment for every batch: the worker creates and zero-fills it, passes its file descriptor over a socket (an
authenticated connection per batch), and the main process maps it and faults its pages in. On this project's
2-core VM a worker then spent 162 µs of CPU per 112×112 JPEG (45 in the kernel) against 94 µs to decode it; with
the reused buffers here, 120 µs (10 in the kernel), and the main process 9 µs instead of 21 (README, "Training
loader"). Here each worker keeps a few segments (*slots*). The main process maps each one once
and keeps the mapping; a batch in a known segment then crosses as a few integers, and the worker writes the next
batch into a segment the main process no longer uses.

Reuse must never overwrite a batch that is still alive in the main process: in the training step, in Lightning's
one-batch look-ahead, in a callback that kept it, or through a view of it. The protocol:

* each worker owns a small shared int32 ``flags`` array: per slot a *held* flag and the segment generation the main
  process has mapped, plus one cell that says the main process has mapped ``flags`` itself;
* the worker takes a slot only while its held flag is 0, sets it to 1 and writes the batch. It sends
  ``(token, slot, generation, layout)``, plus the segment while the main process has not mapped that generation of
  it, plus ``flags`` while the main process has not mapped it (see :class:`TrackedBatch`);
* the main process (:func:`_received`) builds the batch's tensors on a fresh NumPy view of its mapping of the slot,
  through ``torch.from_numpy``. That view lives exactly as long as the tensors' storage, so as long as any tensor,
  slice, view or ``.numpy()`` array of the batch (images or labels) is alive. A ``weakref.finalize`` on it sets the
  held flag back to 0 when it dies;
* when every slot is still held, the worker falls back to a fresh segment, what ``default_collate`` does. Reuse
  only waits for a release; it never blocks and never guesses.

Only the worker writes 1 and only the main process writes 0, each to a slot the other one is not using, so no lock
is needed. A slot the main process never releases is simply never reused: for instance when a batch is collated
with ``default_collate`` instead of :func:`facetrain.data.batches.collate_batch`. The worker cannot tell whether
another ``collate_fn`` passed the buffer on, so it never frees a slot by itself. The main process drops its
mappings of a worker's segments once that worker process has exited (batches still alive keep theirs).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import get_worker_info

#: Slots per worker. A Lightning fit with the default ``prefetch_factor=2`` used 3 segments per worker (1 and 2
#: workers, measured in the main process), so 4 leaves one spare; each slot costs one batch of ``/dev/shm`` per
#: worker, about what the DataLoader keeps in flight anyway.
DEFAULT_SLOTS = 4

#: A worker: its process id and a random number (a later process may reuse the id).
Token = tuple[int, int]

#: Where a batch's tensors lie in its segment: ``(images shape, labels byte offset)``; images start at byte 0 (uint8)
#: and labels are ``images shape[0]`` int64 values.
Layout = tuple[tuple[int, ...], int]


@dataclass
class BufferPool:
    """A worker's reusable segments and their shared flags (one pool per worker process, see :func:`worker_pool`).

    Attributes:
        slots: Number of reusable segments.
        flags: Shared int32, ``2 * slots + 1`` cells: ``[0, slots)`` held flags (1 while the main process may hold
            the slot's batch), ``[slots, 2 * slots)`` the segment generation the main process has mapped per slot,
            and last 1 once the main process has mapped this array.
        token: This pool's worker token.
        buffers: The segments, allocated on first use and replaced by a larger one when a larger batch arrives.
        generations: Per slot, how many segments it has had (the current segment's generation, 0 before the first).
        reused: Batches written into an already allocated segment (for tests and the benchmark).
        fresh: Batches that needed a new segment (first use, growth, or every slot still held).
    """

    slots: int = DEFAULT_SLOTS
    flags: torch.Tensor = field(init=False)
    token: Token = field(init=False)
    buffers: list[torch.UntypedStorage | None] = field(init=False)
    generations: list[int] = field(init=False)
    reused: int = 0
    fresh: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"BufferPool needs at least one slot, got {self.slots}")
        self.flags = torch.zeros(2 * self.slots + 1, dtype=torch.int32).share_memory_()
        self.token = (os.getpid(), int.from_bytes(os.urandom(8), "little"))
        self.buffers = [None] * self.slots
        self.generations = [0] * self.slots

    def take(self, nbytes: int) -> tuple[torch.UntypedStorage, int | None]:
        """A shared storage of at least ``nbytes`` and its slot, or a fresh one-off storage and None if all are held."""
        flags = self.flags.numpy()
        for slot in range(self.slots):
            if flags[slot] != 0:
                continue
            buffer = self.buffers[slot]
            if buffer is None or buffer.nbytes() < nbytes:
                buffer = self.buffers[slot] = torch.UntypedStorage._new_shared(nbytes)
                self.generations[slot] += 1
                self.fresh += 1
            else:
                self.reused += 1
            flags[slot] = 1
            return buffer, slot
        self.fresh += 1
        return torch.UntypedStorage._new_shared(nbytes), None

    def mapped(self, slot: int) -> bool:
        """Whether the main process holds a mapping of ``slot``'s current segment (then batches need not carry it)."""
        return int(self.flags[self.slots + slot]) == self.generations[slot]

    @property
    def flags_mapped(self) -> bool:
        """Whether the main process holds a mapping of :attr:`flags`."""
        return bool(self.flags[2 * self.slots])


_pool: BufferPool | None = None
_pool_key: tuple[int, int] | None = None


def worker_pool(slots: int = DEFAULT_SLOTS) -> BufferPool | None:
    """This worker process's pool of ``slots`` segments (created on first use), or None outside a DataLoader worker.

    The pool is per process: a forked worker never uses the parent's, and none exists in the main process, where a
    batch needs no shared memory.
    """
    global _pool, _pool_key
    if get_worker_info() is None:
        return None
    key = (os.getpid(), slots)
    if _pool is None or _pool_key != key:
        # A pool with another slot count is dropped, not reused: its held batches stay valid in the main process
        # (the segments live while anyone maps them), and the new pool's segments and token are new.
        _pool, _pool_key = BufferPool(slots), key
    return _pool


class TrackedBatch(list):
    """``[images, labels]`` in a pool slot. Pickled, it carries only where the batch lies (see module doc)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pool: BufferPool, slot: int) -> None:
        if images.dtype != torch.uint8 or images.storage_offset() != 0 or labels.dtype != torch.int64:
            raise ValueError("TrackedBatch: uint8 images at the start of the segment and int64 labels expected")
        super().__init__([images, labels])
        self.pool, self.slot = pool, slot

    def __reduce__(self):  # type: ignore[override]
        pool, slot = self.pool, self.slot
        storage = None if pool.mapped(slot) else pool.buffers[slot]
        flags = None if pool.flags_mapped else pool.flags
        layout = (tuple(self[0].shape), self[1].storage_offset() * 8)
        return _received, (pool.token, slot, pool.generations[slot], layout, storage, flags)


_lock = threading.Lock()  # batches may be unpickled by the pin-memory thread and the main thread
_flags: dict[Token, np.ndarray] = {}  # the main process's mapping of each live worker's flags
_segments: dict[tuple[Token, int], tuple[int, np.ndarray]] = {}  # (token, slot) -> (generation, mapped bytes)


def _forget_exited_workers() -> None:
    """Drops the mappings of worker processes that have exited (each holds a file descriptor).

    POSIX only: there ``kill(pid, 0)`` only probes, while on Windows signal 0 is CTRL_C_EVENT. Elsewhere the
    mappings stay until the main process exits (one loader's worth per worker generation).
    """
    if os.name != "posix":
        return
    for token in list(_flags):
        try:
            os.kill(token[0], 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's process has the id now: ours has exited
            pass
        del _flags[token]
        for key in [key for key in _segments if key[0] == token]:
            del _segments[key]


def _release(flags: np.ndarray, slot: int) -> None:
    flags[slot] = 0


def _received(
    token: Token,
    slot: int,
    generation: int,
    layout: Layout,
    storage: torch.UntypedStorage | None,
    flags: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Unpickling a :class:`TrackedBatch` in the main process: ``[images, labels]`` on the mapped segment.

    Raises:
        RuntimeError: The batch names a segment or flags array this process has no mapping of (the protocol rules
            this out; raising beats reading the wrong memory).
    """
    with _lock:
        if flags is not None and token not in _flags:
            _forget_exited_workers()
            _flags[token] = flags.numpy()
            _flags[token][-1] = 1  # only now: the worker may stop sending the flags
        if token not in _flags:
            raise RuntimeError(f"a batch from worker {token[0]} arrived before its flags (shared_batches protocol)")
        worker_flags = _flags[token]
        slots = (len(worker_flags) - 1) // 2
        if storage is not None:
            whole = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
            _segments[token, slot] = (generation, whole)
            worker_flags[slots + slot] = generation  # only now: the worker may stop sending this segment
        mapped_generation, whole = _segments.get((token, slot), (None, None))
        if mapped_generation != generation or whole is None:
            raise RuntimeError(
                f"worker {token[0]} slot {slot}: batch in segment generation {generation}, mapped "
                f"{mapped_generation} (shared_batches protocol)"
            )
    shape, labels_offset = layout
    count = shape[0]
    view = whole[: labels_offset + 8 * count]  # a new array object per batch: its life is the batch's
    weakref.finalize(view, _release, worker_flags, slot)
    flat = torch.from_numpy(view)
    images = flat[: int(np.prod(shape))].view(shape)
    labels = flat[labels_offset:].view(torch.int64)
    return [images, labels]
