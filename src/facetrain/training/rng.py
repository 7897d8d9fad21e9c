"""The global random number generators' states as checkpoint data, so a resumed run draws what it would have drawn.

Lightning restores the weights, optimizer and loop position, but not the global generators (torch CPU and CUDA,
NumPy, Python's ``random``) that dropout, augmentations in the main process and any other global draw use. The
training module stores :func:`rng_state` under :data:`RNG_KEY` in every checkpoint and restores it on load. The state
is tensors and plain containers only, so checkpoints stay loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["RNG_KEY", "rng_state", "set_rng_state"]

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
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
