"""AdaFace: closed form and the official form over steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facetrain.losses import (
    AdaFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    B,
    C,
    D,
    full_cos,
    target_value,
)


def test_adaface_closed_form() -> None:
    fn = lambda z: lambda c, y: LF.adaface_logits(c, y, torch.tensor([z]), m=0.4)  # noqa: E731
    theta = math.pi / 3
    assert target_value(fn(0.0), 0.5) == pytest.approx(0.5 - 0.4)  # ẑ = 0: CosFace with m
    assert target_value(fn(1.0), 0.5) == pytest.approx(math.cos(theta - 0.4) - 0.8)  # high quality: 2m additive
    assert target_value(fn(-1.0), 0.5) == pytest.approx(math.cos(theta + 0.4))  # low quality: ArcFace with m
    # The margined angle is clipped to [1e-3, π − 1e-3].
    assert target_value(fn(1.0), math.cos(0.1)) == pytest.approx(math.cos(1e-3) - 0.8)
    z = LF.adaface_margin_scaler(torch.tensor([20.0, 30.0, 200.0, 0.0]), mean=20.0, std=10.0, h=0.333)
    torch.testing.assert_close(z, torch.tensor([0.0, 0.333 * 10 / 10.001, 1.0, -0.666 / 1.0001]))


def adaface_reference(x, w, y, mean, std, m=0.4, h=0.333, s=64.0, alpha=0.01):
    """Official mk-minchul/AdaFace ``head.py`` forward on (normalised embedding, norm), written out."""
    norms = x.norm(dim=1, keepdim=True).clamp(0.001, 100).detach()
    mean = norms.mean() * alpha + (1 - alpha) * mean
    std = norms.std() * alpha + (1 - alpha) * std
    scaler = ((norms - mean) / (std + 1e-3) * h).clamp(-1, 1)
    cos = full_cos(x, w)
    onehot = F.one_hot(y, w.shape[0]).to(cos.dtype)
    theta = cos.acos()
    theta_m = (theta + onehot * m * scaler * -1).clamp(1e-3, math.pi - 1e-3)
    logits = (theta_m.cos() - onehot * (m + m * scaler)) * s
    return logits, mean, std


def test_adaface_head_matches_official_form_over_steps() -> None:
    torch.manual_seed(0)
    head = AdaFaceHead(D, C).double()
    mean, std = torch.tensor(20.0, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)
    for step in range(3):
        x = torch.randn(B, D, dtype=torch.float64) * (1 + 2 * torch.rand(B, 1, dtype=torch.float64)) * (step + 3)
        y = torch.randint(0, C, (B,))
        logits, mean, std = adaface_reference(x, head.weight, y, mean, std)
        out = head(x, y)
        torch.testing.assert_close(out.logits, logits)
        torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
        torch.testing.assert_close(head.batch_mean, mean)
        torch.testing.assert_close(head.batch_std, std)
    # The norms are read from the un-normalised embeddings: scaling x changes the logits.
    head.eval()
    x, y = torch.randn(B, D, dtype=torch.float64), torch.randint(0, C, (B,))
    assert not torch.allclose(head(x, y).logits, head(50 * x, y).logits)
