"""Row-wise SGD for Partial FC: only the class centres sampled in a step are updated, their momentum included.

Partial FC v1 (InsightFace ``partial_fc.py`` before commit ab27f4d6) kept the weight and its momentum outside the
optimizer and swapped the sampled rows in every step, so rows that were not sampled kept both their value and their
momentum (v2 indexes a dense parameter, so SGD's momentum and weight decay touch every row of the block every step).
Here the sampled rows are a small leaf tensor whose gradient the backward fills; :func:`sgd_rows` then applies
``torch.optim.SGD``'s update to those rows only (O(sampled rows · D) per step, never the whole block), with the
hyper-parameters of the optimizer's parameter group that holds the block (so the LR schedule applies as to every
other parameter).
"""

from __future__ import annotations

import torch

from facetrain.utils.rules import ConfigError

__all__ = ["check_sgd_group", "param_group_of", "sgd_rows"]


def param_group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    """The parameter group of ``optimizer`` that holds ``param``.

    Raises:
        ValueError: When no group holds it (the optimizer was built without the classifier).
    """
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("classifier: the optimizer does not hold the classifier's weight; build it from all parameters")


def check_sgd_group(group: dict) -> None:
    """Refuses optimizer settings the row update does not reproduce (it is SGD with momentum, weight decay, Nesterov).

    Raises:
        ConfigError: Naming ``classifier.sample_rate`` and the ``optimizer`` key.
    """
    if "momentum" not in group or "dampening" not in group:
        raise ConfigError(
            "classifier.sample_rate < 1 (Partial FC) updates the sampled rows with SGD; optimizer=sgd is required, "
            f"got an optimizer with keys {sorted(k for k in group if k != 'params')}"
        )
    if group["dampening"] != 0 or group.get("maximize", False):
        raise ConfigError(
            "classifier.sample_rate < 1 (Partial FC) supports optimizer.dampening=0 and maximize=false only, got "
            f"dampening={group['dampening']!r}, maximize={group.get('maximize', False)!r}"
        )


@torch.no_grad()
def sgd_rows(
    weight: torch.Tensor,
    momentum_buffer: torch.Tensor,
    rows: torch.Tensor,
    grad: torch.Tensor,
    group: dict,
    found_inf: torch.Tensor | None = None,
) -> None:
    """``torch.optim.SGD.step`` (dampening 0) applied to ``weight[rows]`` only, in place.

    d = g + wd·w;  buf ← μ·buf + d;  w ← w − lr·(d + μ·buf if nesterov else buf). A zero buffer makes the first
    update of a row exactly torch's first step (which sets buf = d).

    Args:
        weight: The block (n×D).
        momentum_buffer: Its momentum (n×D), kept for the whole block.
        rows: Distinct row indices (r,) updated this step.
        grad: Their gradients (r×D).
        group: The optimizer's parameter group (``lr``, ``momentum``, ``weight_decay``, ``nesterov``).
        found_inf: A device flag (non-zero: skip the step, as a fused optimizer does); non-finite row gradients skip
            the update too.
    """
    check_sgd_group(group)
    lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    w = weight[rows]
    d = grad + wd * w if wd else grad
    buf = momentum_buffer[rows].mul_(mu).add_(d) if mu else d
    step = d + mu * buf if group.get("nesterov", False) and mu else buf
    new_w = w - lr * step
    skip = ~torch.isfinite(grad).all()
    if found_inf is not None:
        skip = skip | (found_inf.to(skip.device) != 0)
    weight[rows] = torch.where(skip, w, new_w)
    if mu:
        momentum_buffer[rows] = torch.where(skip, momentum_buffer[rows], buf)
