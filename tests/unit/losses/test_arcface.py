"""ArcFace margin (facetrain.losses.functional.arcface_logits)."""

from __future__ import annotations

import math

import pytest
import torch

from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    HALF_PI,
    target_value,
    targets_on_grid,
)


def test_arcface_closed_form() -> None:
    assert target_value(lambda c, y: LF.arcface_logits(c, y, 0.5), 0.5) == pytest.approx(math.cos(math.pi / 3 + 0.5))
    assert target_value(lambda c, y: LF.arcface_logits(c, y, 0.2), 0.0) == pytest.approx(math.cos(HALF_PI + 0.2))
    # θ = acos(−0.95) > π − 0.5: fallback cos − m·sin(π − m).
    expected = -0.95 - 0.5 * math.sin(math.pi - 0.5)
    assert target_value(lambda c, y: LF.arcface_logits(c, y, 0.5), -0.95) == pytest.approx(expected)


def test_arcface_m0_is_plain_cosine() -> None:
    cos = torch.rand(32, 10) * 2 - 1
    labels = torch.randint(0, 10, (32,))
    torch.testing.assert_close(LF.arcface_logits(cos, labels, 0.0), cos, rtol=0, atol=1e-6)


@pytest.mark.parametrize("m", [0.1, 0.5, 0.8, 1.2])
def test_arcface_monotone_in_theta(m: float) -> None:
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    values = targets_on_grid(lambda cos, y: LF.arcface_logits(cos, y, m), torch.cos(theta))
    assert (values.diff() <= 1e-12).all()
    assert float(values[-1]) == pytest.approx(-1.0 - m * math.sin(m), abs=1e-6)
    # Without the fallback cos(θ + m) would rise again for θ > π − m.
    assert float(values[-1]) < math.cos(math.pi + m)


def test_arcface_easy_margin() -> None:
    t = torch.tensor([-0.9, -0.3, 0.0, 0.3, 0.9], dtype=torch.float64)
    values = targets_on_grid(lambda cos, y: LF.arcface_logits(cos, y, 0.5, easy_margin=True), t)
    torch.testing.assert_close(values[:3], t[:3], rtol=0, atol=0)
    torch.testing.assert_close(values[3:], torch.cos(torch.acos(t[3:]) + 0.5))
