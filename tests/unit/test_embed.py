"""Sharding and gathering of evaluation embeddings (what DDP evaluation relies on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facetrain.evaluation.embed import shard_indices, unshard


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_shards_cover_every_item_once(n: int, world: int) -> None:
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_unshard_restores_order_and_drops_padding(n: int, world: int) -> None:
    data = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    per_rank = -(-n // world)
    gathered = torch.full((world, per_rank, 3), -1.0)  # -1 marks padding rows
    for r in range(world):
        idx = shard_indices(n, r, world)
        gathered[r, : len(idx)] = data[torch.as_tensor(idx)]
    out = unshard(gathered, n)
    assert torch.equal(out, data)
