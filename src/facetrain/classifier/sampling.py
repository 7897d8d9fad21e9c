"""Partial FC's class sampling (An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face
Recognition CNNs by Partial FC", CVPR 2022; InsightFace ``recognition/arcface_torch/partial_fc_v2.py``, ``sample``).

Each step every rank keeps all classes of its block that occur in the global batch (the positives) and fills up to
``num_sample = int(sample_rate · block)`` classes (arcface_torch's count rule: truncation, not ceil) with negatives
drawn uniformly without replacement from the rest of the block; when the positives alone reach ``num_sample`` only
they are kept. The draw is arcface_torch's: uniform scores, the positives set to 2, ``topk``, sorted.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["num_sampled", "rank_generator", "sample_classes"]


def num_sampled(sample_rate: float, block: int) -> int:
    """Classes kept per step before the positives are counted: ``int(sample_rate · block)`` (arcface_torch)."""
    return int(sample_rate * block)


def rank_generator(seed: int, rank: int) -> torch.Generator:
    """A CPU generator for the sampled negatives of ``rank``, seeded from (seed, rank) so that ranks differ."""
    state = int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)


def sample_classes(positive: torch.Tensor, num_sample: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted local class indices kept this step: every positive plus uniform negatives up to ``num_sample``.

    One score per class of the block is always drawn, so the generator advances by the same amount every step
    whatever the batch holds (a resumed run draws what the uninterrupted one would have drawn).

    Args:
        positive: (block,) bool, the classes of this block present in the global batch.
        num_sample: Target number of kept classes (:func:`num_sampled`).
        generator: CPU generator (its state belongs in the checkpoint).

    Returns:
        Sorted int64 indices into the block, on the device of ``positive``.
    """
    scores = torch.rand(positive.shape[0], generator=generator).to(positive.device)
    scores.masked_fill_(positive, 2.0)
    count = max(num_sample, int(positive.sum()))
    return scores.topk(count, sorted=False).indices.sort().values
