"""Checkpoints of a sharded classifier that resume with any number of processes (save with N, resume with M).

Lightning's DDP strategy writes rank 0's checkpoint only, and rank 0 holds one block of the class centres. So at save
time every rank hands its block to rank 0 (:func:`all_gather_rows`) and the checkpoint holds the *full* class matrix,
in row order, under the same ``state_dict`` key a replicated head uses (so ``evaluate.py``, export and fine-tuning
read it unchanged), together with the full row-wise optimizer state of that matrix (SGD ``momentum_buffer``, AdamW
``exp_avg`` / ``exp_avg_sq``; everything else, such as AdamW's ``step``, is kept as it is) and the classifier's
row-wise buffers (Partial FC's ``weight_momentum``, kept outside the optimizer by its row update). On load, before
Lightning copies the state into the module and the optimizer, every rank cuts its block for the current world size out
of all of them (:func:`slice_rows`): the blocks follow :func:`facetrain.classifier.block_range` over classes, so the K
sub-centre rows of a class stay together.

Partial FC draws its negatives from a seeded ``torch.Generator`` per rank. Its state is saved for every rank
(:data:`CLASSIFIER_KEY`). Resumed with the same world size, every rank continues its own stream exactly. With a
different world size the blocks are different sets of classes, so no saved stream matches a new block: each rank's
generator is then re-seeded deterministically from the saved seed, the global step and the new (rank, world size)
(:func:`reseed_value`); the resumed run is reproducible, but it is not the continuation of the old run's draws.

The sharding follows arcface_torch's ``partial_fc_v2.py`` (InsightFace), which keeps its shards in per-rank files and
therefore cannot change the GPU count on resume (insightface #1811); here the checkpoint is world-size independent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from facetrain.classifier.shards import block_range

__all__ = [
    "CLASSIFIER_KEY",
    "all_gather_rows",
    "check_class_count",
    "gather_optimizer_states",
    "gather_rows",
    "load_sharded_classifier",
    "map_row_state",
    "on_load_checkpoint",
    "on_save_checkpoint",
    "reseed_value",
    "row_state_keys",
    "save_sharded_classifier",
    "slice_optimizer_state",
    "slice_rows",
]

#: Checkpoint key of the classifier's layout and Partial FC generator states (plain data and tensors only).
CLASSIFIER_KEY = "facetrain_classifier"


def _row_counts(num_classes: int, world_size: int, rows_per_class: int) -> list[int]:
    """Rows held by each rank: :func:`block_range` over classes, times K rows per class."""
    counts = []
    for rank in range(world_size):
        start, stop = block_range(num_classes, world_size, rank)
        counts.append((stop - start) * rows_per_class)
    return counts


def gather_rows(blocks: Sequence[torch.Tensor], num_classes: int, rows_per_class: int = 1) -> torch.Tensor:
    """The full matrix from every rank's block, in rank (= row) order.

    Args:
        blocks: Rank r's rows, for r = 0 … W-1 (W = ``len(blocks)``).
        num_classes: Global class count C.
        rows_per_class: K rows per class (sub-centre ArcFace), stored class-major (row c·K + j).

    Returns:
        The (C·K)×… matrix.

    Raises:
        ValueError: When a block does not have the rows :func:`block_range` gives its rank.
    """
    expected = _row_counts(num_classes, len(blocks), rows_per_class)
    for rank, (block, rows) in enumerate(zip(blocks, expected, strict=True)):
        if block.shape[0] != rows:
            raise ValueError(
                f"rank {rank} of {len(blocks)} holds {block.shape[0]} rows, expected {rows} "
                f"({num_classes} classes x {rows_per_class} rows per class)"
            )
    return torch.cat(list(blocks), dim=0)


def slice_rows(full: torch.Tensor, world_size: int, rank: int, rows_per_class: int = 1) -> torch.Tensor:
    """Rank ``rank``'s block of the full (C·K)×… matrix for ``world_size`` ranks (a copy, not a view).

    A copy, so that the sliced checkpoint entry does not keep the whole matrix alive through its storage.

    Raises:
        ValueError: When the row count is not a multiple of ``rows_per_class``.
    """
    if full.shape[0] % rows_per_class:
        raise ValueError(f"{full.shape[0]} rows are not a multiple of {rows_per_class} rows per class")
    start, stop = block_range(full.shape[0] // rows_per_class, world_size, rank)
    return full[start * rows_per_class : stop * rows_per_class].clone()


def row_state_keys(optimizer_state: dict[str, Any], index: int, num_rows: int) -> list[str]:
    """Keys of parameter ``index``'s row-wise optimizer state, sorted (every rank must gather them in one order).

    Row-wise means a tensor whose first dimension is the parameter's row count (SGD ``momentum_buffer``, AdamW
    ``exp_avg`` / ``exp_avg_sq``); scalars such as AdamW's ``step`` are not. Empty before the first step.
    """
    param_state = optimizer_state["state"].get(index, {})
    return sorted(
        key
        for key, value in param_state.items()
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == num_rows
    )


def map_row_state(
    optimizer_state: dict[str, Any], index: int, num_rows: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    """A copy of an ``Optimizer.state_dict()`` with ``fn`` applied to the row-wise state of parameter ``index``.

    The input is not modified: its tensors are the live optimizer's.

    Args:
        optimizer_state: ``Optimizer.state_dict()``.
        index: The parameter's index in that state dict (its position over all parameter groups).
        num_rows: The parameter's current row count.
        fn: Maps a row-wise state tensor to its new value.
    """
    out = dict(optimizer_state)
    out["state"] = dict(optimizer_state["state"])
    keys = row_state_keys(optimizer_state, index, num_rows)
    if keys:
        param_state = dict(out["state"][index])
        for key in keys:
            param_state[key] = fn(param_state[key])
        out["state"][index] = param_state
    return out


def gather_optimizer_states(
    states: Sequence[dict[str, Any]], index: int, num_classes: int, rows_per_class: int = 1
) -> dict[str, Any]:
    """One optimizer state dict with the full row-wise state of parameter ``index`` from every rank's state dict.

    Everything else (other parameters, scalars such as ``step``, the parameter groups) is rank 0's: data parallel
    ranks hold the same values there.
    """
    counts = _row_counts(num_classes, len(states), rows_per_class)
    keys = row_state_keys(states[0], index, counts[0])
    for rank, state in enumerate(states):
        if row_state_keys(state, index, counts[rank]) != keys:
            raise ValueError(f"rank {rank}'s optimizer state of parameter {index} has other row-wise keys than {keys}")
    out = dict(states[0])
    out["state"] = dict(states[0]["state"])
    if keys:
        full = [gather_rows([s["state"][index][key] for s in states], num_classes, rows_per_class) for key in keys]
        out["state"][index] = {**states[0]["state"][index], **dict(zip(keys, full, strict=True))}
    return out


def slice_optimizer_state(
    optimizer_state: dict[str, Any], index: int, world_size: int, rank: int, rows_per_class: int = 1
) -> dict[str, Any]:
    """The optimizer state with parameter ``index``'s full row-wise state cut to ``rank``'s block."""
    tensors = [v for v in optimizer_state["state"].get(index, {}).values() if isinstance(v, torch.Tensor) and v.dim()]
    full_rows = max((v.shape[0] for v in tensors), default=-1)
    return map_row_state(
        optimizer_state, index, full_rows, lambda value: slice_rows(value, world_size, rank, rows_per_class)
    )


def all_gather_rows(
    local: torch.Tensor, num_classes: int, rows_per_class: int = 1, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Every rank's block of a row-sharded tensor, gathered on every rank in row order (a collective).

    The blocks may differ in size by one class; they are padded to the largest for ``all_gather`` (which needs equal
    shapes on gloo) and trimmed again. Without an initialised process group this is the identity.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return gather_rows([local], num_classes, rows_per_class)
    world_size = dist.get_world_size(group)
    counts = _row_counts(num_classes, world_size, rows_per_class)
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    buffers = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(buffers, padded, group=group)
    return gather_rows([buf[:n] for buf, n in zip(buffers, counts, strict=True)], num_classes, rows_per_class)


def reseed_value(seed: int, step: int, rank: int, world_size: int) -> int:
    """The Partial FC generator seed of ``rank`` after a resume at global ``step`` with a different world size.

    Hashed with NumPy's ``SeedSequence`` (as :func:`facetrain.classifier.sampling.rank_generator` seeds the first
    run), so that neighbouring (seed, step, rank, world size) give unrelated streams; stable across runs and machines.
    """
    entropy = [int(seed), int(step), int(rank), int(world_size)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _param_index(optimizer: Optimizer, param: nn.Parameter) -> int | None:
    """Index of ``param`` in ``optimizer.state_dict()`` (parameters are numbered over all groups in order)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return next((i for i, p in enumerate(params) if p is param), None)


def _row_keys(classifier: nn.Module) -> list[str]:
    """``state_dict`` names (relative to the classifier) of its row-sharded tensors: ``weight``, every buffer of the
    classifier itself with the weight's shape (a row-wise companion such as Partial FC's ``weight_momentum``), and
    any listed in an optional ``row_sharded_keys`` attribute."""
    shape = classifier.weight.shape
    same_shape = [name for name, buf in classifier.named_buffers(recurse=False) if buf.shape == shape]
    return sorted({"weight", *same_shape, *getattr(classifier, "row_sharded_keys", ())})


def check_class_count(checkpoint: dict[str, Any], weight_key: str, num_classes: int, rows_per_class: int = 1) -> None:
    """Refuses a checkpoint whose classifier has another class count than the data, before any training.

    Args:
        checkpoint: The loaded checkpoint.
        weight_key: The classifier weight's ``state_dict`` key (e.g. ``head.weight``).
        num_classes: The class count of the data (``data.num_classes``).
        rows_per_class: K rows per class.

    Raises:
        ValueError: Naming the key and both class counts.
    """
    meta = checkpoint.get(CLASSIFIER_KEY)
    if meta is not None:
        saved = int(meta["num_classes"])
    elif weight_key in checkpoint.get("state_dict", {}):
        saved = checkpoint["state_dict"][weight_key].shape[0] // rows_per_class
    else:
        raise ValueError(f"checkpoint has no classifier weight '{weight_key}' (state_dict) to resume from")
    if saved != num_classes:
        raise ValueError(
            f"checkpoint classifier '{weight_key}' has {saved} classes but data.num_classes is {num_classes}: a "
            "resumed run needs the identities it was trained on (to start a new classifier from this checkpoint's "
            "backbone, fine-tune with model.init_from=<ckpt> instead of ckpt_path)"
        )


def save_sharded_classifier(
    classifier: nn.Module,
    checkpoint: dict[str, Any],
    prefix: str,
    optimizers: Sequence[Optimizer] = (),
    group: dist.ProcessGroup | None = None,
) -> None:
    """``on_save_checkpoint`` part of a sharded classifier: full matrix and optimizer rows into ``checkpoint``.

    A collective: under DDP every rank must call it (Lightning calls ``on_save_checkpoint`` on every rank, then rank 0
    writes the file).

    Args:
        classifier: A :class:`~facetrain.classifier.ShardedClassifier` (``weight``, ``num_classes``,
            ``rows_per_class``; optional ``generator`` and ``seed`` for Partial FC).
        checkpoint: Lightning's checkpoint dict, changed in place.
        prefix: The classifier's ``state_dict`` prefix in the LightningModule (e.g. ``"head."``).
        optimizers: The trainer's optimizers, in the order of ``checkpoint["optimizer_states"]``.
        group: Process group (None: the default one).
    """
    num_classes, k = int(classifier.num_classes), int(classifier.rows_per_class)
    local_rows = classifier.weight.shape[0]
    state = checkpoint["state_dict"]
    for name in _row_keys(classifier):
        state[prefix + name] = all_gather_rows(state[prefix + name], num_classes, k, group)
    opt_params: list[list[int]] = []
    for i, optimizer in enumerate(optimizers if "optimizer_states" in checkpoint else ()):
        index = _param_index(optimizer, classifier.weight)
        if index is None:
            continue
        checkpoint["optimizer_states"][i] = map_row_state(
            checkpoint["optimizer_states"][i], index, local_rows, lambda t: all_gather_rows(t, num_classes, k, group)
        )
        opt_params.append([i, index])
    _, world_size = _world()
    meta: dict[str, Any] = {
        "num_classes": num_classes,
        "rows_per_class": k,
        "world_size": world_size,
        "weight_key": prefix + "weight",
        "optimizer_params": opt_params,  # [optimizer index, parameter index] of the classifier weight
    }
    generator: torch.Generator | None = getattr(classifier, "generator", None)
    if generator is not None:
        local = generator.get_state()
        if world_size > 1:
            states = [torch.empty_like(local) for _ in range(world_size)]
            dist.all_gather(states, local, group=group)
        else:
            states = [local]
        meta["generator_states"] = states
        meta["seed"] = int(classifier.seed)
    checkpoint[CLASSIFIER_KEY] = meta


def load_sharded_classifier(classifier: nn.Module, checkpoint: dict[str, Any], prefix: str) -> None:
    """``on_load_checkpoint`` part: cuts this rank's block out of the full matrix and optimizer rows, in place.

    Lightning calls ``on_load_checkpoint`` before it copies ``state_dict`` into the module and long before it restores
    the optimizers, so the sliced entries are what they load. Also takes a checkpoint of a replicated head (its
    ``state_dict`` holds the same full matrix). No collective: every rank reads the whole file.

    Raises:
        ValueError: When the checkpoint's class count differs from the classifier's (:func:`check_class_count`), or
            its rows per class.
    """
    num_classes, k = int(classifier.num_classes), int(classifier.rows_per_class)
    weight_key = prefix + "weight"
    meta = checkpoint.get(CLASSIFIER_KEY)
    if meta is not None and int(meta["rows_per_class"]) != k:
        raise ValueError(f"checkpoint classifier '{weight_key}' has {meta['rows_per_class']} rows per class, not {k}")
    check_class_count(checkpoint, weight_key, num_classes, k)
    rank, world_size = _world()
    state = checkpoint["state_dict"]
    for name in _row_keys(classifier):
        if prefix + name in state:
            state[prefix + name] = slice_rows(state[prefix + name], world_size, rank, k)
    if state[weight_key].shape != classifier.weight.shape:
        raise ValueError(
            f"rank {rank} of {world_size}: sliced '{weight_key}' is {tuple(state[weight_key].shape)}, the classifier's "
            f"block is {tuple(classifier.weight.shape)}"
        )
    for i, index in meta["optimizer_params"] if meta is not None else ():
        if i < len(checkpoint.get("optimizer_states", ())):
            checkpoint["optimizer_states"][i] = slice_optimizer_state(
                checkpoint["optimizer_states"][i], index, world_size, rank, k
            )
    _restore_generator(classifier, checkpoint, prefix, rank, world_size)


def _restore_generator(
    classifier: nn.Module, checkpoint: dict[str, Any], prefix: str, rank: int, world_size: int
) -> None:
    """Same world size: this rank's saved stream continues exactly. Otherwise: re-seeded (module docstring).

    ``ShardedClassifier`` also keeps its generator state in ``state_dict`` (``get_extra_state``: ``_extra_state``
    with a ``generator`` entry), where rank 0's checkpoint holds rank 0's state only; that entry is rewritten to this
    rank's state, since Lightning loads ``state_dict`` after this hook.
    """
    generator: torch.Generator | None = getattr(classifier, "generator", None)
    meta = checkpoint.get(CLASSIFIER_KEY) or {}
    if generator is None or "generator_states" not in meta:
        return
    states = meta["generator_states"]
    if len(states) == world_size:
        generator.set_state(states[rank])
    else:
        generator.manual_seed(reseed_value(int(meta["seed"]), int(checkpoint.get("global_step", 0)), rank, world_size))
    extra_key = prefix + "_extra_state"
    extra = checkpoint["state_dict"].get(extra_key)
    if isinstance(extra, dict) and "generator" in extra:
        checkpoint["state_dict"][extra_key] = {**extra, "generator": generator.get_state(), "rank": rank}


def _is_sharded(head: nn.Module) -> bool:
    """Whether ``head`` holds one block of the class centres (the attributes of ``ShardedClassifier``)."""
    return all(hasattr(head, name) for name in ("weight", "num_classes", "rows_per_class", "row_start", "row_stop"))


def on_save_checkpoint(
    head: nn.Module, checkpoint: dict[str, Any], prefix: str, optimizers: Sequence[Optimizer]
) -> None:
    """The training module's ``on_save_checkpoint`` part: a sharded head's blocks gathered (every rank must call it);
    nothing for a head that holds every class."""
    if _is_sharded(head):
        save_sharded_classifier(head, checkpoint, prefix, optimizers)


def on_load_checkpoint(head: nn.Module, checkpoint: dict[str, Any], prefix: str) -> None:
    """The training module's ``on_load_checkpoint`` part: a sharded head's block cut out; for a replicated head the
    class-count check only (its checkpoint, sharded or not, holds the same full matrix).

    Raises:
        ValueError: The checkpoint's class count differs from the head's (``data.num_classes``), naming the key.
    """
    if _is_sharded(head):
        load_sharded_classifier(head, checkpoint, prefix)
        return
    weight, num_classes = getattr(head, "weight", None), getattr(head, "num_classes", None)
    if isinstance(weight, torch.Tensor) and isinstance(num_classes, int) and "state_dict" in checkpoint:
        check_class_count(checkpoint, prefix + "weight", num_classes, weight.shape[0] // num_classes)
