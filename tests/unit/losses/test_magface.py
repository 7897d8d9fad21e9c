"""MagFace: margin, regulariser, easy_margin and the official form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facetrain.losses import (
    MagFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    B,
    C,
    D,
    arcface_full,
    full_cos,
    target_value,
)


def test_magface_closed_form() -> None:
    norms = torch.tensor([5.0, 10.0, 60.0, 110.0, 500.0], dtype=torch.float64)
    margins = LF.magface_margin(norms)
    torch.testing.assert_close(margins, torch.tensor([0.45, 0.45, 0.625, 0.8, 0.8], dtype=torch.float64))
    reg = LF.magface_regularizer(norms)
    a = norms.clamp(10, 110)
    torch.testing.assert_close(reg, a / 110**2 + 1 / a)
    assert float(reg[2]) == pytest.approx(60 / 12100 + 1 / 60)
    norm60 = torch.tensor([60.0], dtype=torch.float64)
    fallback = lambda c, y: LF.magface_logits(c, y, norm60, easy_margin=False)  # noqa: E731
    assert target_value(fallback, 0.5) == pytest.approx(math.cos(math.pi / 3 + 0.625))
    assert target_value(fallback, -0.95) == pytest.approx(-0.95 - 0.625 * math.sin(math.pi - 0.625))
    assert target_value(fallback, -0.1) == pytest.approx(math.cos(math.acos(-0.1) + 0.625))


def test_magface_easy_margin_is_the_default_and_leaves_non_positive_targets_alone() -> None:
    # Official MagLinear(easy_margin=True): cos(θ + m) where cos θ > 0, cos θ itself elsewhere.
    easy = lambda c, y: LF.magface_logits(c, y, torch.tensor([60.0], dtype=torch.float64))  # noqa: E731
    assert target_value(easy, 0.5) == pytest.approx(math.cos(math.pi / 3 + 0.625))
    assert target_value(easy, 0.01) == pytest.approx(math.cos(math.acos(0.01) + 0.625))
    assert target_value(easy, 0.0) == 0.0
    assert target_value(easy, -0.1) == -0.1
    assert target_value(easy, -0.95) == -0.95
    assert MagFaceHead(D, C).easy_margin and not MagFaceHead(D, C, easy_margin=False).easy_margin
    with pytest.raises(ValueError, match=r"MagFaceHead\.easy_margin=1 is invalid: it must be one of True, False"):
        MagFaceHead(D, C, easy_margin=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("easy_margin", [True, False])
def test_magface_head_matches_official_form_including_gradients(easy_margin: bool) -> None:
    torch.manual_seed(0)
    head = MagFaceHead(D, C, easy_margin=easy_margin).double()
    x = (
        torch.randn(B, D, dtype=torch.float64) * torch.linspace(1, 40, B, dtype=torch.float64)[:, None]
    ).requires_grad_()
    y = torch.randint(0, C, (B,))
    out = head(x, y)
    out.loss.backward()
    grad_head = x.grad.clone()
    x.grad = None

    a = x.norm(dim=1, keepdim=True).clamp(10, 110)
    margin = (0.8 - 0.45) / 100 * (a - 10) + 0.45
    cos, onehot = full_cos(x, head.weight).clamp(-1, 1), F.one_hot(y, C).bool()
    if easy_margin:  # official MagLinear's easy_margin branch
        with_margin = torch.cos(torch.acos(cos) + margin)
        logits = 64 * torch.where(onehot & (cos > 0), with_margin, cos)
        assert (cos[onehot] > 0).any() and (cos[onehot] <= 0).any()  # both branches are exercised
    else:
        logits = 64 * arcface_full(cos, onehot, margin)
    loss = F.cross_entropy(logits, y) + 35 * (a / 110**2 + 1 / a).mean()
    loss.backward()
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(grad_head, x.grad)
    assert (a > 10).any() and (a < 110).any()
