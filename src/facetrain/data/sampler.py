"""Exact, resumable sample order for training: a seeded, DDP-aware sampler that can start mid-epoch.

Why not ``RandomSampler`` / ``DistributedSampler``: their position inside an epoch is not part of any checkpoint, so
a run resumed from a mid-epoch checkpoint replays the epoch from its start (samples repeated) or, with a fresh
permutation, skips some. Here the order of epoch ``e`` is a pure function of ``(seed, e)``, and the checkpointed
position is the number of batches the *training loop* has processed in the epoch (the datamodule reads it from
Lightning's progress counters; counting what the DataLoader yielded would be off by the batch Lightning prefetches).

The position is kept as a *global* count of consumed samples of the epoch's permutation, and rank ``r`` of ``W``
reads ``order[start + r :: W]``: so a run may even resume on a different number of processes and continue the same
permutation from the same place.

Augmentation randomness is made a function of ``(seed, epoch, index)`` as well (:class:`EpochSeeded`): worker
processes are re-created with new seeds after a resume, so per-worker RNG streams could not be replayed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from facetrain.data.dataset import FaceDataset

__all__ = ["EpochSeeded", "ResumableSampler", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, independent across (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class ResumableSampler(Sampler[tuple[int, int]]):
    """Seeded permutation per epoch, sharded over DDP ranks, that can start in the middle of an epoch.

    Yields ``(epoch, index)`` keys; :class:`EpochSeeded` turns them into samples with per-sample augmentation seeds.

    Args:
        num_samples: Dataset size N.
        seed: Base seed; epoch e uses the permutation drawn from ``(seed, e)``.
        shuffle: False keeps 0..N−1 every epoch (for debugging).
        rank: This process's rank.
        world_size: Number of processes. Each epoch is padded (wrapping around, as ``DistributedSampler`` does) to a
            multiple of it so that every rank gets the same number of samples.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if num_samples < 1:
            raise ValueError(f"ResumableSampler needs at least one sample, got num_samples={num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start = 0  # global position (samples of the epoch's order already consumed by all ranks together)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's global sample order, padded to a multiple of the world size."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1 & 0xFFFFFFFF))
            order = torch.randperm(self.num_samples, generator=gen).numpy()
        else:
            order = np.arange(self.num_samples)
        padded = math.ceil(self.num_samples / self.world_size) * self.world_size
        return np.resize(order, padded)  # np.resize repeats from the start: the wrap-around padding

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start; a new epoch starts at position 0, a resumed one where it was."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        for index in order[self.start + self.rank :: self.world_size]:
            yield (self.epoch, int(index))
        self.start = 0  # the (possibly resumed) epoch is exhausted; iterating again replays it from the start

    def state_dict(self, consumed_batches: int, batch_size: int) -> dict[str, int]:
        """Checkpoint state after ``consumed_batches`` batches (from the epoch start) of ``batch_size`` per rank.

        Plain ints only (checkpoints load with ``weights_only=True``); ``start`` counts global samples.
        """
        return {
            "epoch": self.epoch,
            "start": consumed_batches * batch_size * self.world_size,
            "seed": self.seed,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continues the checkpointed epoch at its position; refuses a different dataset or seed."""
        for key in ("seed", "num_samples"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"cannot resume the sample order: the checkpoint's {key} is {state[key]}, this run's is "
                    f"{getattr(self, key)} (a different dataset or seed would repeat and skip samples)"
                )
        self.epoch, self.start = int(state["epoch"]), int(state["start"])

    def __len__(self) -> int:
        """Samples per rank in a full epoch (Lightning sizes its epoch loop from it; a resumed epoch stops early)."""
        return math.ceil(self.num_samples / self.world_size)


class EpochSeeded(Dataset):
    """Dataset view taking ``(epoch, index)`` keys: seeds the transform per sample, then returns ``dataset[index]``.

    When the wrapped dataset's CPU transform is random (:attr:`~facetrain.data.dataset.FaceDataset.seeds_samples`),
    it is re-seeded with :func:`sample_seed` before each sample; the augmentation of a sample then depends only on
    ``(seed, epoch, index)``, not on which worker process loaded it. Otherwise whole batches go to the dataset's
    batched fetch (``Uint8CHW``: the random augmentation runs on the device).
    """

    def __init__(self, dataset: FaceDataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self.dataset.seeds_samples:
            self.dataset.seed_sample(sample_seed(self.seed, epoch, index))
        return self.dataset[index]

    def __getitems__(self, keys: list[tuple[int, int]]) -> Any:
        """A batch of keys: forwarded whole to the dataset's batched fetch when no sample needs its own seed, else
        key by key as above."""
        if not self.dataset.seeds_samples:
            return self.dataset.__getitems__([index for _, index in keys])
        return [self[key] for key in keys]

    def __getattr__(self, name: str) -> Any:  # labels, num_classes, ... of the wrapped dataset
        if name == "dataset":  # not yet set (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
