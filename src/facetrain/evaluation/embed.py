"""Embedding a list of images, sharded over DDP ranks and gathered back in order, with optional flip fusion."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from facetrain.data.decode import read_rgb
from facetrain.data.image_files import ImageList
from facetrain.data.transforms import Transform, to_tensor

EmbedFn = Callable[[torch.Tensor], torch.Tensor]
AllGather = Callable[[torch.Tensor], torch.Tensor]

# Test-time flip fusion (docs/protocols.md §2.3): none; sum of the raw original and mirrored embeddings, then L2 norm
# (InsightFace's test(), NormFace); concatenation of the L2-normalised halves (SphereFace, CosFace, Center loss).
FLIP_MODES = ("none", "sum", "concat")


def flip_mode(flip: bool | str | None) -> str:
    """The flip-fusion mode of a config value: ``none``, ``sum`` or ``concat`` (false/true mean none/sum)."""
    if flip is None or flip is False:
        return "none"
    if flip is True:
        return "sum"
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {list(FLIP_MODES)} (or true/false), got {flip!r}")
    return str(flip)


def fuse_flip(emb: torch.Tensor, emb_flipped: torch.Tensor | None, mode: str, normalize: bool = True) -> torch.Tensor:
    """L2-normalised fused embeddings of a batch and of its mirror image.

    ``sum`` adds the *raw* embeddings before normalising, exactly as InsightFace's ``test()``; ``concat`` joins
    the two L2-normalised halves and normalises the result (dividing by sqrt(2)), so its cosine is the mean of the
    two halves' cosines and its squared L2 distance stays in [0, 4].

    ``normalize=False`` keeps the raw norm of ``none`` and ``sum`` (IJB's N1 template pooling weighs each face by
    the norm of its flip-summed embedding, InsightFace's ``use_norm_score``); ``concat`` is unit either way.
    """
    mode = flip_mode(mode)
    finish = (lambda x: F.normalize(x, dim=1)) if normalize else (lambda x: x)
    if mode == "none":
        return finish(emb)
    if emb_flipped is None:
        raise ValueError(f"flip={mode!r} needs the embeddings of the mirrored images")
    if mode == "sum":
        return finish(emb + emb_flipped)
    return F.normalize(torch.cat([F.normalize(emb, dim=1), F.normalize(emb_flipped, dim=1)], dim=1), dim=1)


class DecodedImages(Dataset):
    """Evaluation images decoded once and kept as uint8 ``H×W×3`` arrays (not floats: 4× less memory).

    An evaluation set is embedded after every epoch; decoding its JPEGs each time costs more than the forward pass
    on a GPU. :meth:`ensure` decodes the requested indices once (a thread pool: OpenCV releases the GIL) and later
    calls only apply the deterministic transform. Under DDP each rank decodes and keeps only its own shard.

    Args:
        decode: Returns image ``i`` as uint8 RGB (``read_rgb`` of a path, or ``BinSet.decode``).
        size: Number of images.
        transform: Deterministic evaluation pipeline applied on access.
        threads: Decoding threads.
    """

    def __init__(self, decode: Callable[[int], np.ndarray], size: int, transform: Transform | None, threads: int = 4):
        self.decode = decode
        self.size = int(size)
        self.transform = transform
        self.threads = max(1, int(threads))
        self.cache: dict[int, np.ndarray] = {}

    @classmethod
    def from_paths(cls, paths: Sequence[str] | np.ndarray, transform: Transform | None) -> DecodedImages:
        paths = np.asarray(paths)
        return cls(lambda i: read_rgb(str(paths[i])), len(paths), transform)

    def ensure(self, indices: Sequence[int] | np.ndarray) -> None:
        """Decodes the indices not decoded yet (errors name the file, as ``read_rgb`` does)."""
        missing = [int(i) for i in indices if int(i) not in self.cache]
        if not missing:
            return
        with ThreadPoolExecutor(self.threads) as pool:
            for i, image in zip(missing, pool.map(self.decode, missing), strict=True):
                self.cache[i] = image

    @property
    def nbytes(self) -> int:
        """Bytes held by the decoded images."""
        return sum(a.nbytes for a in self.cache.values())

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.cache.get(index)
        if image is None:
            image = self.decode(index)
        return to_tensor(self.transform, image)


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
    paths: Sequence[str] | np.ndarray | DecodedImages,
    transform: Transform | None,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 0,
    flip: bool | str = "none",
    rank: int = 0,
    world_size: int = 1,
    all_gather: AllGather | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """L2-normalised embeddings of ``paths``, one row per path, in the order given.

    Under DDP every rank embeds its own shard; the shards are padded to equal length for ``all_gather`` and the
    padding is removed again, so the result equals a single-process run.

    Args:
        embed: Maps a batch of images to embeddings (the model in eval mode).
        paths: Image files, or a :class:`DecodedImages` cache (decoded once for this rank's shard; its transform is
            used and ``transform`` is ignored).
        flip: Flip fusion with the horizontally mirrored image: ``none``, ``sum`` or ``concat`` (see
            :func:`fuse_flip`; ``concat`` doubles the width). Booleans mean none/sum.
        all_gather: Collective that stacks a tensor from every rank into ``(world, ...)``; needed when
            ``world_size > 1``.
        normalize: False returns the raw (flip-fused) embeddings, norms kept (see :func:`fuse_flip`).
    """
    mode = flip_mode(flip)
    if isinstance(paths, DecodedImages):
        local = shard_indices(len(paths), rank, world_size)
        paths.ensure(local)
        # Decoded already: the workers would only apply the transform, and would need a copy of the cache.
        loader = DataLoader(Subset(paths, local.tolist()), batch_size=batch_size, num_workers=0)
    else:
        paths = np.asarray(paths)
        local = shard_indices(len(paths), rank, world_size)
        loader = DataLoader(ImageList(paths[local], transform), batch_size=batch_size, num_workers=num_workers)
    chunks = []
    for images in loader:
        images = images.to(device)
        emb = embed(images).float()
        flipped = embed(torch.flip(images, dims=[3])).float() if mode != "none" else None
        chunks.append(fuse_flip(emb, flipped, mode, normalize))
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
