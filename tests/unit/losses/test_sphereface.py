"""SphereFace / A-Softmax: psi(theta), the lambda blend and its annealing."""

from __future__ import annotations

import math

import pytest
import torch

from facetrain.losses import (
    SphereFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    psi_reference,
    target_value,
    targets_on_grid,
)


@pytest.mark.parametrize(
    ("degrees", "expected"),
    [
        (30.0, math.cos(math.radians(120))),  # k = 0: cos 4θ
        (60.0, -math.cos(math.radians(240)) - 2),  # k = 1: −cos 4θ − 2 = −1.5
        (100.0, math.cos(math.radians(400)) - 4),  # k = 2: cos 4θ − 4
        (150.0, -math.cos(math.radians(600)) - 6),  # k = 3
    ],
)
def test_sphereface_psi_closed_form(degrees: float, expected: float) -> None:
    t = math.cos(math.radians(degrees))
    assert target_value(lambda c, y: LF.sphereface_logits(c, y, 4), t) == pytest.approx(expected, abs=1e-12)
    # The annealing blend (λ·cos θ + ψ)/(1 + λ).
    blended = target_value(lambda c, y: LF.sphereface_logits(c, y, 4, lambda_=5.0), t)
    assert blended == pytest.approx((5.0 * t + expected) / 6.0, abs=1e-12)


def test_sphereface_m1_is_identity() -> None:
    cos = torch.rand(6, 5, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 5, (6,))
    torch.testing.assert_close(LF.sphereface_logits(cos, labels, m=1), cos)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_sphereface_psi_continuous_monotone(m: int) -> None:
    theta = torch.linspace(0, math.pi, 100001, dtype=torch.float64)
    psi = targets_on_grid(lambda cos, y: LF.sphereface_logits(cos, y, m), torch.cos(theta))
    steps = psi.diff()
    assert (steps < 0).all()
    # Continuity: |dψ/dθ| <= m, so no step may exceed m·Δθ (a jump of 2 would if k were wrong).
    assert steps.abs().max() <= m * math.pi / 100000 * 1.01
    assert float(psi[0]) == pytest.approx(1.0)
    assert float(psi[-1]) == pytest.approx(1.0 - 2 * m)
    torch.testing.assert_close(psi, psi_reference(theta, m), rtol=0, atol=1e-9)


def test_sphereface_large_lambda_approaches_cosine() -> None:
    cos = torch.rand(8, 6, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 6, (8,))
    torch.testing.assert_close(LF.sphereface_logits(cos, labels, 4, 1e9), cos, rtol=0, atol=1e-8)
    assert not torch.allclose(LF.sphereface_logits(cos, labels, 4, 0.0), cos)


@pytest.mark.parametrize("m", [0, -1, 1.5, 4.0, True])
def test_sphereface_head_rejects_bad_m(m: object) -> None:
    # ψ is defined piecewise for integer m only; the head checks m once (the functional form runs every forward).
    with pytest.raises(ValueError, match=r"SphereFaceHead\.m=.* is invalid: it must be an integer >= 1"):
        SphereFaceHead(4, 3, m=m)  # type: ignore[arg-type]


D, C, B = 16, 10, 12


def test_sphereface_lambda_annealing() -> None:
    head = SphereFaceHead(D, C)
    assert float(head.log_values()["sphereface_lambda"]) == pytest.approx(1000.0)
    head.on_optimizer_step()
    assert float(head.current_lambda()) == pytest.approx(1000.0 / 1.12)
    head.iteration.fill_(1000)
    assert float(head.current_lambda()) == pytest.approx(1000.0 / 121.0)
    head.iteration.fill_(10**6)
    assert float(head.current_lambda()) == pytest.approx(5.0)
    custom = SphereFaceHead(D, C, lambda_base=100.0, lambda_gamma=0.5, lambda_power=2.0, lambda_min=0.0)
    custom.iteration.fill_(2)
    assert float(custom.current_lambda()) == pytest.approx(100.0 / 4.0)


def test_sphereface_lambda_changes_the_loss_and_survives_state_dict() -> None:
    torch.manual_seed(0)
    head = SphereFaceHead(D, C)
    x, y = torch.randn(B, D), torch.randint(0, C, (B,))
    early = head(x, y).loss
    head.iteration.fill_(10**6)
    late = head(x, y).loss
    assert late > early  # λ → λ_min moves the target towards ψ(θ) <= cos θ, i.e. a harder target
    fresh = SphereFaceHead(D, C)
    fresh.load_state_dict(head.state_dict())
    assert int(fresh.iteration) == 10**6
    torch.testing.assert_close(fresh(x, y).loss, late)
