"""The global random number generators' states as checkpoint data, so a resumed run draws what it would have drawn.

Lightning restores the weights, optimizer and loop position, but not the global generators (torch CPU and CUDA,
NumPy, Python's ``random``) that dropout, augmentations in the main process and any other global draw use. The
training module stores every rank's :func:`rng_state` under :data:`RNG_KEY` in every checkpoint
(:func:`gather_rng_states`, a collective: Lightning builds the checkpoint on every rank and rank 0 writes it) and each
rank restores its own on load (:func:`restore_rng_state`). Ranks do not share a stream: each GPU's CUDA generator is
advanced only by its own rank, and any draw whose count depends on the rank's data moves the CPU streams apart.
The state is tensors and plain containers only, so checkpoints stay loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["RNG_KEY", "gather_rng_states", "restore_rng_state", "rng_state", "set_rng_state"]

#: Where a checkpoint keeps the global RNG states (:func:`rng_state`).
RNG_KEY = "facetrain_rng"


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, NumPy, Python) as tensors and plain data (weights-only loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # NumPy's key array as a tensor: a weights-only load refuses numpy arrays.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device: the one its rank draws from
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        if isinstance(state["cuda"], list | tuple):  # checkpoints before per-rank states: every device's state
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"])


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rng_states() -> dict[str, Any]:
    """Every rank's :func:`rng_state`, in rank order, as ``{"ranks": [...]}`` (a collective under DDP)."""
    state = rng_state()
    _, world = _rank_and_world()
    if world == 1:
        return {"ranks": [state]}
    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return {"ranks": states}


def restore_rng_state(saved: dict[str, Any]) -> str | None:
    """Restores this rank's state from :func:`gather_rng_states` (or a single :func:`rng_state` of older checkpoints).

    Returns:
        None when the generators continue exactly; else why not (another process count, or a checkpoint that holds
        one rank's state only): every rank then takes saved rank ``min(rank, n - 1)``'s state.
    """
    rank, world = _rank_and_world()
    states = saved.get("ranks", [saved])
    set_rng_state(states[min(rank, len(states) - 1)])
    if len(states) == world:
        return None
    return f"the checkpoint holds the global RNG states of {len(states)} process(es), this run has {world}"
