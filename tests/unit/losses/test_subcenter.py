"""Sub-center ArcFace."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facetrain.losses import (
    SubCenterArcFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    B,
    C,
    D,
    arcface_full,
)


def test_subcenter_closed_form() -> None:
    # Two classes with k = 2: columns (0,0) (0,1) (1,0) (1,1).
    cos = torch.tensor([[0.1, 0.5, -0.3, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(LF.subcenter_max(cos, 2), torch.tensor([[0.5, 0.2]], dtype=torch.float64))
    out = LF.subcenter_arcface_logits(cos, torch.tensor([0]), k=2, m=0.5)
    torch.testing.assert_close(out, torch.tensor([[math.cos(math.pi / 3 + 0.5), 0.2]], dtype=torch.float64))
    assert torch.equal(
        LF.subcenter_arcface_logits(cos, torch.tensor([1]), k=1, m=0.5), LF.arcface_logits(cos, torch.tensor([1]), 0.5)
    )


def test_subcenter_head_matches_full_matrix() -> None:
    torch.manual_seed(0)
    head = SubCenterArcFaceHead(D, C).double()
    assert head.weight.shape == (3 * C, D)
    x, y = torch.randn(B, D, dtype=torch.float64), torch.randint(0, C, (B,))
    w = F.normalize(head.weight).reshape(C, 3, D)
    cos = torch.einsum("bd,ckd->bck", F.normalize(x), w).amax(dim=2)
    logits = 64 * arcface_full(cos, F.one_hot(y, C).bool(), 0.5)
    out = head(x, y)
    assert out.cosine.shape == (B, C)
    torch.testing.assert_close(out.cosine, cos)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
