"""Helpers shared by the head tests: margin-function probes, references from the official code and sizes."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

HALF_PI = math.pi / 2

MarginFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Sizes of the newer heads' tests (test_losses_extra before the split).
B, D, C = 6, 16, 7


def target_value(
    fn: MarginFn, cos_value: float, others: tuple[float, ...] = (0.25,), dtype: torch.dtype = torch.float64
) -> float:
    """Applies ``fn`` to a 1×(1+len(others)) matrix whose target entry (class 0) is ``cos_value``."""
    cos = torch.tensor([[cos_value, *others]], dtype=dtype)
    return float(fn(cos, torch.tensor([0]))[0, 0])


def targets_on_grid(fn: MarginFn, t: torch.Tensor) -> torch.Tensor:
    """Target values of ``fn`` for every cosine in ``t`` (one sample per row, target class 0)."""
    cos = torch.stack([t, torch.zeros_like(t)], dim=1)
    return fn(cos, torch.zeros(len(t), dtype=torch.long))[:, 0]


def cam_reference(t: float, c: float) -> float:
    """Official cam_loss.py form: c_ = -(1 / (log2(cos c + 1) - 1)); f = (t + 1)^c_ / 2^(c_ - 1) - 1."""
    c_ = -(1 / (math.log2(math.cos(c) + 1) - 1))
    return (t + 1) ** c_ / 2 ** (c_ - 1) - 1


def psi_reference(theta: torch.Tensor, m: int) -> torch.Tensor:
    """A-Softmax ψ(θ) = (−1)^k cos(mθ) − 2k with k = floor(mθ/π), written from the definition with acos angles."""
    k = torch.floor(theta * m / math.pi).clamp(max=m - 1)
    return (-1.0) ** k * torch.cos(m * theta) - 2 * k


def random_cos(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A B×C cosine matrix with exact ±1 and 0 targets mixed with random values, plus labels."""
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(B, C, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    labels = torch.randint(0, C, (B,), generator=g)
    cos[0, labels[0]], cos[1, labels[1]], cos[2, labels[2]] = 1.0, -1.0, 0.0
    return cos, labels


def full_cos(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.normalize(x) @ F.normalize(w).T


def arcface_full(cos: torch.Tensor, onehot: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """Pre-2022 InsightFace ArcFace: cos·cos m − sin·sin m, fallback cos − m·sin(π − m) where cos <= cos(π − m)."""
    m = torch.as_tensor(m, dtype=cos.dtype)
    sin = torch.sqrt((1 - cos**2).clamp_min(0))
    phi = cos * torch.cos(m) - sin * torch.sin(m)
    phi = torch.where(cos > torch.cos(math.pi - m), phi, cos - torch.sin(math.pi - m) * m)
    return torch.where(onehot, phi, cos)
