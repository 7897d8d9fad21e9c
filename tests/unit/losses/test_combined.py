"""Combined margin (ArcFace paper Eq. 4, InsightFace m1/m2/m3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facetrain.losses import (
    CombinedMarginHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    B,
    C,
    D,
    full_cos,
    random_cos,
    target_value,
    targets_on_grid,
)


def test_combined_closed_form() -> None:
    assert target_value(LF.combined_logits, 0.5) == pytest.approx(math.cos(math.pi / 3 + 0.3) - 0.2)
    fn = lambda c, y: LF.combined_logits(c, y, 1.5, 0.2, 0.1)  # noqa: E731
    assert target_value(fn, 0.5) == pytest.approx(math.cos(1.5 * math.pi / 3 + 0.2) - 0.1)
    # m1 = 2, m2 = 0.5: θ* = (π − 0.5)/2 < π/2, so cos = 0 is in the fallback: cos − max(m2·sin m2, 1 + cos θ*) − m3.
    shift = max(0.5 * math.sin(0.5), 1 + math.cos((math.pi - 0.5) / 2))
    assert target_value(lambda c, y: LF.combined_logits(c, y, 2.0, 0.5, 0.1), 0.0) == pytest.approx(-shift - 0.1)


def test_combined_with_only_m2_is_arcface_and_with_only_m3_is_cosface() -> None:
    cos, labels = random_cos(torch.float64)
    cos[3, labels[3]] = -0.95  # arcface fallback region
    assert torch.equal(LF.combined_logits(cos, labels, 1.0, 0.5, 0.0), LF.arcface_logits(cos, labels, 0.5))
    torch.testing.assert_close(LF.combined_logits(cos, labels, 1.0, 0.0, 0.35), LF.cosface_logits(cos, labels, 0.35))


@pytest.mark.parametrize("m", [(1.0, 0.3, 0.2), (1.0, 0.5, 0.0), (1.35, 0.25, 0.1), (2.0, 0.5, 0.1), (4.0, 0.0, 0.0)])
def test_combined_monotone_in_theta(m: tuple[float, float, float]) -> None:
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    values = targets_on_grid(lambda c, y: LF.combined_logits(c, y, *m), torch.cos(theta))
    assert (values[1:] <= values[:-1] + 1e-12).all()


def test_combined_head_matches_full_matrix() -> None:
    torch.manual_seed(0)
    head = CombinedMarginHead(D, C, m1=1.2, m2=0.3, m3=0.2).double()
    x, y = torch.randn(B, D, dtype=torch.float64), torch.randint(0, C, (B,))
    cos = full_cos(x, head.weight)
    theta = torch.acos(cos)
    theta_star = (math.pi - 0.3) / 1.2
    fallback = cos - max(0.3 * math.sin(math.pi - 0.3), 1 + math.cos(theta_star)) - 0.2
    target = torch.where(theta < theta_star, torch.cos(1.2 * theta + 0.3) - 0.2, fallback)
    logits = 64 * torch.where(F.one_hot(y, C).bool(), target, cos)
    out = head(x, y)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
