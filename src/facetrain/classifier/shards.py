"""Contiguous blocks of class centres per rank (the sharding of InsightFace's Partial FC, ``partial_fc_v2.py``).

Rank r of W holds rows ``[start, stop)`` of the global C×D class matrix, with the block sizes of
``numpy.array_split``: the first ``C mod W`` ranks hold ⌊C/W⌋ + 1 rows, the others ⌊C/W⌋. This is arcface_torch's
``num_local = C // W + (rank < C % W)``, ``class_start = C // W · rank + min(rank, C % W)``.
"""

from __future__ import annotations

import numpy as np
import torch

from facetrain.utils.rules import Interval, check_value

__all__ = ["block_range", "init_rows"]


def block_range(num_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a ``num_rows``-row matrix held by ``rank`` of ``world_size`` contiguous blocks.

    Args:
        num_rows: Number of rows to split (classes, or classes · K for sub-centres split by class beforehand).
        world_size: Number of ranks, >= 1.
        rank: This rank, in [0, world_size).

    Returns:
        ``(start, stop)``; sizes as ``numpy.array_split(range(num_rows), world_size)[rank]``.

    Raises:
        ValueError: On a negative row count, a world size < 1 or a rank outside [0, world_size).
    """
    check_value("block_range.num_rows", num_rows, Interval(0, integer=True))
    check_value("block_range.world_size", world_size, Interval(1, integer=True))
    check_value("block_range.rank", rank, Interval(0, integer=True))
    if rank >= world_size:
        raise ValueError(f"block_range rank must be < world_size={world_size}, got {rank}")
    base, extra = divmod(int(num_rows), int(world_size))
    start = base * rank + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


#: Rows per independently seeded chunk of the initial class centres: the initial global matrix does not depend on
#: the world size, and a rank draws only the chunks that overlap its block.
INIT_CHUNK_ROWS = 4096


def init_rows(start: int, stop: int, dim: int, seed: int, std: float = 0.01) -> torch.Tensor:
    """Rows ``[start, stop)`` of the initial global class-centre matrix, N(0, std²) (InsightFace's Partial FC init).

    Row r comes from chunk r // INIT_CHUNK_ROWS, drawn from a generator seeded with (seed, chunk), so any split of
    the rows over ranks yields the same global matrix.
    """
    check_value("init_rows.start", start, Interval(0, integer=True))
    check_value("init_rows.stop", stop, Interval(start, integer=True))
    out = torch.empty(stop - start, dim)
    for chunk in range(start // INIT_CHUNK_ROWS, -(-stop // INIT_CHUNK_ROWS)):
        lo = chunk * INIT_CHUNK_ROWS
        seed_state = np.random.SeedSequence([int(seed), chunk]).generate_state(1, dtype=np.uint64)[0] >> 1
        generator = torch.Generator().manual_seed(int(seed_state))
        rows = torch.randn(INIT_CHUNK_ROWS, dim, generator=generator).mul_(std)
        a, b = max(start, lo), min(stop, lo + INIT_CHUNK_ROWS)
        out[a - start : b - start] = rows[a - lo : b - lo]
    return out
