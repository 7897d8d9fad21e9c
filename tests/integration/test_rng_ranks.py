"""Every rank resumes its own global RNG streams (2 gloo processes).

Ranks do not share a stream once their draws differ (a GPU's CUDA generator is advanced only by its own rank; any
draw whose count depends on the rank's data moves the CPU streams apart). A checkpoint that kept rank 0's state only
would hand rank 1 rank 0's stream on resume; :func:`facetrain.training.rng.gather_rng_states` keeps each rank's.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facetrain.training.rng import gather_rng_states, restore_rng_state

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

WORLD = 2


def _draws() -> list[float]:
    return [*torch.rand(3).tolist(), *np.random.rand(3).tolist(), random.random()]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0), np.random.seed(0), random.seed(0)  # the same seed on every rank, as seed_everything
        for _ in range(rank):  # rank 1 has drawn more: the ranks' streams differ from here on
            _draws()
        saved = gather_rng_states()
        expected = _draws()  # what an uninterrupted run draws next on this rank
        _draws()  # the killed run went on; a resumed process starts elsewhere
        note = restore_rng_state(saved)
        torch.save(
            {"expected": expected, "resumed": _draws(), "note": note, "n": len(saved["ranks"])}, f"{out}/{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_each_rank_resumes_its_own_global_rng_streams(tmp_path: Path) -> None:
    from tests.faults import free_port  # here, not at the top: spawned workers import this module

    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["n"] == WORLD and result["note"] is None
        assert result["resumed"] == result["expected"], f"rank {rank} did not continue its own streams"


def test_another_process_count_is_reported() -> None:
    saved = {"ranks": [gather_rng_states()["ranks"][0]] * 3}  # saved by 3 processes, restored by this one
    assert restore_rng_state(saved) == "the checkpoint holds the global RNG states of 3 process(es), this run has 1"
