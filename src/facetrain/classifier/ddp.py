"""DDP plumbing of the sharded classifier: its class centres are never all-reduced, and a counter that shows it.

Every rank holds a different block of class centres, and the block's gradient is already complete on its rank (the
embeddings of the whole global batch were gathered before the cosines), so DDP must leave it alone: averaging it with
the other ranks' blocks would be wrong (and, with unequal blocks, impossible), and DDP's start-up broadcast from rank
0 would overwrite the other ranks' blocks. :func:`exclude_from_ddp` names the classifier's parameters and buffers in
the module attribute ``DistributedDataParallel`` reads when it is constructed
(``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``). Lightning's ``DDPStrategy`` wraps the
``LightningModule`` itself (``DistributedDataParallel(module=lightning_module, ...)`` in ``DDPStrategy._setup_model``),
after ``configure_model`` and ``setup``, so the LightningModule calls it from either hook with names relative to
itself. The same applies to arcface_torch, which keeps its ``PartialFC_V2`` outside its DDP-wrapped backbone.

:func:`count_allreduce_bytes` registers a DDP communication hook that adds up the bytes of every gradient bucket and
then runs DDP's default all-reduce (``default_hooks.allreduce_hook``), so training is unchanged. Lightning registers
``DDPStrategy(ddp_comm_hook=...)`` only on CUDA; :class:`AllReduceBytesCallback` registers the counter itself on any
device, on the wrapped model at the start of training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "AllReduceBytes",
    "AllReduceBytesCallback",
    "count_allreduce_bytes",
    "exclude_from_ddp",
    "ignored_names",
    "shared_buffers",
]


def ignored_names(root: nn.Module, excluded: Iterable[nn.Module]) -> list[str]:
    """Fully qualified names (relative to ``root``) of every parameter and buffer of the ``excluded`` submodules.

    Raises:
        ValueError: When a module to exclude is not a submodule of ``root``.
    """
    prefixes = {id(module): name for name, module in root.named_modules()}
    names: list[str] = []
    for module in excluded:
        if id(module) not in prefixes:
            raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")
        prefix = prefixes[id(module)] + "." if prefixes[id(module)] else ""
        names += [prefix + n for n, _ in module.named_parameters()]
        names += [prefix + n for n, _ in module.named_buffers()]
    return sorted(set(names))


def exclude_from_ddp(root: nn.Module, *excluded: nn.Module) -> list[str]:
    """Marks the parameters and buffers of ``excluded`` (submodules of ``root``) for DDP to ignore.

    Call before ``root`` is wrapped in ``DistributedDataParallel``: DDP reads the list once, when it is built. Ignored
    parameters get no gradient all-reduce, are not broadcast from rank 0 at start-up, and their buffers are not
    broadcast every forward (a per-rank buffer, such as a Partial FC generator state, stays the rank's own).

    Returns:
        The names excluded (appended to any excluded before).
    """
    names = ignored_names(root, excluded)
    previous = list(getattr(root, "_ddp_params_and_buffers_to_ignore", ()))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, sorted({*previous, *names}))
    return names


class AllReduceBytes:
    """State of the counting hook: the process group to all-reduce over and the bytes sent so far.

    Attributes:
        process_group: None for the default group.
        total_bytes: Bytes of every bucket all-reduced since the hook was registered (this rank's buffers).
        buckets: Number of buckets all-reduced.
    """

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        self.process_group = process_group
        self.total_bytes = 0
        self.buckets = 0


def _counting_allreduce_hook(state: AllReduceBytes, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Counts the bucket's bytes, then DDP's default all-reduce (sum divided by the world size)."""
    buffer = bucket.buffer()
    state.total_bytes += buffer.numel() * buffer.element_size()
    state.buckets += 1
    return default_hooks.allreduce_hook(state.process_group, bucket)


# DDP checks a hook's annotations against the classes themselves; ``from __future__ import annotations`` made them
# strings.
_counting_allreduce_hook.__annotations__.update(
    {"bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
)


def count_allreduce_bytes(model: DistributedDataParallel) -> AllReduceBytes:
    """Registers the counting hook on a DDP-wrapped model (before its first backward) and returns its counter."""
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(f"count_allreduce_bytes needs a DistributedDataParallel model, got {type(model).__name__}")
    counter = AllReduceBytes(model.process_group)
    model.register_comm_hook(counter, _counting_allreduce_hook)
    return counter


class AllReduceBytesCallback(pl.Callback):
    """Counts the bytes DDP all-reduces per training step (Lightning ``DDPStrategy``, any device).

    Attributes:
        bytes_per_step: Bytes all-reduced by this rank in each training step so far (empty without DDP).
    """

    def __init__(self) -> None:
        self.counter: AllReduceBytes | None = None
        self.bytes_per_step: list[int] = []
        self._seen = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = trainer.strategy.model
        if isinstance(model, DistributedDataParallel):
            self.counter = count_allreduce_bytes(model)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.counter is not None:
            self.bytes_per_step.append(self.counter.total_bytes - self._seen)
            self._seen = self.counter.total_bytes


def shared_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The buffers of ``module`` that DDP keeps identical on every rank: all but those :func:`exclude_from_ddp` named.

    Code that broadcasts buffers itself (e.g. BatchNorm statistics before an evaluation) must broadcast only these: a
    sharded classifier's per-rank buffers (Partial FC's ``weight_momentum``) differ in content, and in shape when the
    blocks are unequal (a collective size mismatch that aborts the run).
    """
    ignored = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
    return [(name, buf) for name, buf in module.named_buffers() if name not in ignored]
