"""The collectives of the sharded classifier, each an identity in a single process (no process group, world 1).

Two differentiable collectives (as ``torch.distributed.nn.functional``, which torch 2.x deprecates); their backward is
what makes the sharded loss reproduce the replicated one:

* ``all_gather`` (embeddings): the backward sums every rank's gradient of a slice back to its owner;
* ``all_reduce`` SUM (target cosines, sums of exponentials): the backward sums the identical upstream gradients of
  the W ranks, i.e. multiplies by W.

Every rank computes the same global loss L, so each gradient that reaches a rank's own embeddings or weight rows is
W·∂L/∂(·). For the embeddings that is what DDP's averaging of the backbone gradients over W ranks expects; the class
weights are not averaged by DDP, so :func:`scale_grad` divides their gradient by W (InsightFace's ``AllGatherFunc``
multiplies the embedding gradient by W instead, for the same reason; ``partial_fc_v2.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_batch", "all_reduce_max", "all_reduce_sum", "distributed", "scale_grad", "world_and_rank"]


def distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def all_gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch in rank order: embeddings with their gradient, labels without.

    Every rank must pass the same batch size (the training loader drops the last incomplete batch, as
    InsightFace's ``partial_fc_v2.py`` requires too).
    """
    if not distributed():
        return embeddings, labels
    gathered = _AllGather.apply(embeddings)
    label_list = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_list, labels.contiguous())
    return gathered, torch.cat(label_list)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, differentiable (the backward sums the upstream gradients of every rank)."""
    if not distributed():
        return tensor
    return _AllReduceSum.apply(tensor)


@torch.no_grad()
def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over the ranks, without gradient (the log-sum-exp shift only)."""
    out = tensor.detach().clone()
    if distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class _AllGather(torch.autograd.Function):
    """Concatenation of every rank's tensor (equal shapes); backward: the sum over ranks of the own slice's gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # A SUM all-reduce instead of a reduce-scatter, which gloo lacks; the gathered batch is only B_g×D.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: the sum over ranks of the upstream gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """``tensor`` unchanged, with its gradient multiplied by ``factor`` (no-op graph node when factor is 1)."""
    if factor == 1.0:
        return tensor
    return _ScaleGrad.apply(tensor, factor)
