"""Embedding a list of images, sharded over DDP ranks and gathered back in order."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from facetrain.data.images import ImageList, Transform

EmbedFn = Callable[[torch.Tensor], torch.Tensor]
AllGather = Callable[[torch.Tensor], torch.Tensor]


def shard_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """Items of ``rank``: every ``world_size``-th index starting at ``rank`` (no padding, no duplicates)."""
    return np.arange(rank, n, world_size)


def unshard(gathered: torch.Tensor, n: int) -> torch.Tensor:
    """Undo :func:`shard_indices` on a ``(world, per_rank, D)`` gather, dropping the padding rows."""
    world_size = gathered.shape[0]
    out = gathered.new_empty((n, *gathered.shape[2:]))
    for rank in range(world_size):
        idx = shard_indices(n, rank, world_size)
        out[torch.as_tensor(idx)] = gathered[rank, : len(idx)]
    return out


@torch.no_grad()
def embed_images(
    embed: EmbedFn,
    paths: Sequence[str] | np.ndarray,
    transform: Transform | None,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 0,
    flip: bool = False,
    rank: int = 0,
    world_size: int = 1,
    all_gather: AllGather | None = None,
) -> np.ndarray:
    """L2-normalised embeddings of ``paths``, one row per path, in the order given.

    Under DDP every rank embeds its own shard; the shards are padded to equal length for ``all_gather`` and the
    padding is removed again, so the result equals a single-process run.

    Args:
        embed: Maps a batch of images to embeddings (the model in eval mode).
        flip: Add the embedding of the horizontally flipped image before normalising (flip fusion).
        all_gather: Collective that stacks a tensor from every rank into ``(world, ...)``; needed when
            ``world_size > 1``.
    """
    paths = np.asarray(paths)
    local = shard_indices(len(paths), rank, world_size)
    loader = DataLoader(ImageList(paths[local], transform), batch_size=batch_size, num_workers=num_workers)
    chunks = []
    for images in loader:
        images = images.to(device)
        emb = embed(images).float()
        if flip:
            emb = emb + embed(torch.flip(images, dims=[3])).float()
        chunks.append(F.normalize(emb, dim=1))
    local_emb = torch.cat(chunks) if chunks else torch.empty(0, 0, device=device)
    if world_size == 1:
        return local_emb.cpu().numpy()
    if all_gather is None:
        raise ValueError("all_gather is required when world_size > 1")
    per_rank = math.ceil(len(paths) / world_size)
    dim = int(all_gather(torch.tensor([local_emb.shape[1] if len(local) else 0], device=device)).max())
    padded = torch.zeros(per_rank, dim, device=device)
    padded[: len(local)] = local_emb
    return unshard(all_gather(padded), len(paths)).cpu().numpy()
