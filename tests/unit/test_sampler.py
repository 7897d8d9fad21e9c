"""ResumableSampler / EpochSeeded: exact order, DDP shards, mid-epoch resume, per-sample augmentation seeds."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facetrain.data.dataset import FaceDataset
from facetrain.data.sampler import EpochSeeded, ResumableSampler, sample_seed


class Indexed(FaceDataset):
    """Returns its index (and a random number from its transform, to see the per-sample seeding)."""

    def __init__(self, n: int, transform: A.Compose | None = None) -> None:
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, float]:
        noise = 0.0
        if self.transform is not None:
            image = np.full((4, 4, 1), 100, dtype=np.uint8)
            noise = float(self.transform(image=image)["image"].mean())
        return index, noise


def _loader(n: int = 23, batch: int = 4, rank: int = 0, world: int = 1, seed: int = 7, **kw) -> DataLoader:
    sampler = ResumableSampler(n, seed=seed, rank=rank, world_size=world)
    dataset = EpochSeeded(Indexed(n, kw.pop("transform", None)), seed)
    return DataLoader(dataset, sampler=sampler, batch_size=batch, **kw)


def _indices(loader: DataLoader, stop_after: int | None = None) -> list[int]:
    out: list[int] = []
    for i, (idx, _) in enumerate(loader):
        out.extend(idx.tolist())
        if stop_after is not None and i + 1 == stop_after:
            break
    return out


def test_epoch_is_a_seeded_permutation_and_epochs_differ() -> None:
    loader = _loader(drop_last=False)
    first = _indices(loader)
    assert sorted(first) == list(range(23))
    assert _indices(_loader(drop_last=False)) == first  # same seed, same order
    loader.sampler.set_epoch(1)
    second = _indices(loader)
    assert sorted(second) == list(range(23)) and second != first
    assert _indices(_loader(seed=8, drop_last=False)) != first


def test_ranks_partition_the_epoch() -> None:
    shards = [_indices(_loader(n=22, rank=r, world=3, drop_last=False)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # padded: every rank the same count
    together = sorted(i for s in shards for i in s)
    assert set(together) == set(range(22)) and len(together) == 24  # two wrap-around repeats, nothing skipped


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_repeats_and_skips_nothing(world: int) -> None:
    n, batch = 40, 4
    full = [_indices(_loader(n=n, batch=batch, rank=r, world=world)) for r in range(world)]
    loaders = [_loader(n=n, batch=batch, rank=r, world=world) for r in range(world)]
    head = [_indices(ld, stop_after=3) for ld in loaders]
    states = [ld.sampler.state_dict(consumed_batches=3, batch_size=batch) for ld in loaders]
    assert states[0]["start"] == 3 * batch * world and all(isinstance(v, int) for v in states[0].values())
    resumed = []
    for r in range(world):
        fresh = _loader(n=n, batch=batch, rank=r, world=world)
        fresh.sampler.load_state_dict(states[r])
        fresh.sampler.set_epoch(states[r]["epoch"])  # Lightning calls set_epoch with the same epoch
        resumed.append(_indices(fresh))
    for r in range(world):
        assert head[r] + resumed[r] == full[r]
    consumed = sorted(i for r in range(world) for i in head[r] + resumed[r])
    assert consumed == sorted(i for r in range(world) for i in full[r])


def test_resume_on_a_different_world_size_continues_the_same_permutation() -> None:
    n, batch = 48, 4
    single = _indices(_loader(n=n, batch=batch, world=1))
    two = [_loader(n=n, batch=batch, rank=r, world=2) for r in range(2)]
    head = [_indices(ld, stop_after=2) for ld in two]  # 2 steps x 2 ranks x 4 = 16 samples
    state = two[0].sampler.state_dict(consumed_batches=2, batch_size=batch)
    one = _loader(n=n, batch=batch, world=1)
    one.sampler.load_state_dict(state)
    rest = _indices(one)
    assert sorted(head[0] + head[1] + rest) == sorted(single)


def test_resumed_epoch_then_next_epoch_starts_at_zero() -> None:
    loader = _loader(n=24, drop_last=True)
    loader.sampler.load_state_dict({"epoch": 0, "start": 20, "seed": 7, "num_samples": 24})
    assert len(_indices(loader)) == 4  # the rest of epoch 0
    assert len(_indices(loader)) == 24  # iterating again replays the whole epoch (no silent skip)
    loader.sampler.load_state_dict({"epoch": 0, "start": 20, "seed": 7, "num_samples": 24})
    loader.sampler.set_epoch(1)
    assert loader.sampler.start == 0 and len(_indices(loader)) == 24
    state = loader.sampler.state_dict(consumed_batches=2, batch_size=4)
    assert state == {"epoch": 1, "start": 8, "seed": 7, "num_samples": 24}


def test_state_from_another_dataset_or_seed_is_refused() -> None:
    state = _loader().sampler.state_dict(consumed_batches=1, batch_size=4)
    with pytest.raises(ValueError, match="num_samples is 23, this run's is 24"):
        _loader(n=24).sampler.load_state_dict(state)
    with pytest.raises(ValueError, match="seed is 7, this run's is 8"):
        _loader(seed=8).sampler.load_state_dict(state)


def test_augmentation_depends_only_on_seed_epoch_index() -> None:
    transform = A.Compose([A.GaussNoise(std_range=(0.2, 0.4), p=1.0)])
    serial = dict(_loader(batch=1, transform=transform, num_workers=0).dataset[(0, i)] for i in range(6))
    again = dict(_loader(batch=1, transform=transform, num_workers=0).dataset[(0, i)] for i in reversed(range(6)))
    assert serial == again  # order of loading does not matter
    workers = {}
    for idx, noise in _loader(batch=2, transform=transform, num_workers=2, drop_last=False):
        workers.update(zip(idx.tolist(), noise.tolist(), strict=True))
    for i in range(6):
        assert workers[i] == pytest.approx(serial[i])
    other_epoch = dict(_loader(batch=1, transform=transform).dataset[(1, i)] for i in range(6))
    assert other_epoch != serial
    assert sample_seed(7, 0, 1) != sample_seed(7, 1, 0)


def test_own_generator_keeps_global_rng_untouched() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    _indices(_loader(generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.rand(1), expected)


class Batched(Indexed):
    """Records how it was asked: a whole batch through ``__getitems__`` or sample by sample."""

    def __init__(self, n: int, transform: A.Compose | None = None) -> None:
        super().__init__(n, transform)
        self.calls: list[list[int]] = []

    def __getitems__(self, indices: list[int]) -> list[tuple[int, float]]:
        self.calls.append(list(indices))
        return [self[i] for i in indices]


def test_batches_go_to_getitems_unless_the_transform_is_seeded() -> None:
    plain = EpochSeeded(Batched(10), seed=7)
    assert plain.__getitems__([(0, 3), (0, 1), (1, 3)]) == [(3, 0.0), (1, 0.0), (3, 0.0)]
    assert plain.dataset.calls == [[3, 1, 3]]
    transform = A.Compose([A.GaussNoise(std_range=(0.2, 0.4), p=1.0)])
    seeded = EpochSeeded(Batched(10, transform), seed=7)
    got = seeded.__getitems__([(0, 3), (1, 3)])
    assert seeded.dataset.calls == []  # per key, each sample seeded from (seed, epoch, index)
    assert got == [seeded[(0, 3)], seeded[(1, 3)]] and got[0] != got[1]
    no_batches = EpochSeeded(Indexed(10), seed=7)
    assert no_batches.__getitems__([(0, 2), (0, 5)]) == [(2, 0.0), (5, 0.0)]


def test_uint8_transform_with_a_random_cpu_step_is_seeded_per_sample() -> None:
    from facetrain.data.transforms import Uint8CHW

    assert not hasattr(Uint8CHW(), "set_random_seed")  # nothing random on the CPU: the batched fetch is kept
    crop = A.Compose([A.RandomCrop(2, 2, p=1.0)])
    transform = Uint8CHW(pre=crop)
    assert hasattr(transform, "set_random_seed")
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    transform.set_random_seed(3)
    first = transform(image=image)["image"]
    transform.set_random_seed(3)
    assert torch.equal(transform(image=image)["image"], first)
