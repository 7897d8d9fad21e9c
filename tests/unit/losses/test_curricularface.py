"""CurricularFace: closed form, hard negatives and the official form over steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facetrain.losses import (
    CurricularFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    B,
    C,
    D,
    full_cos,
    random_cos,
    target_value,
)


def test_curricularface_closed_form() -> None:
    cos = torch.tensor([[0.5, 0.9, 0.2, -0.1]], dtype=torch.float64)
    out = LF.curricularface_logits(cos, torch.tensor([0]), m=0.5, t=0.3)
    threshold = math.cos(math.pi / 3 + 0.5)  # ≈ 0.0237: 0.9 and 0.2 are hard negatives, −0.1 is not
    expected = torch.tensor([[threshold, 0.9 * (0.3 + 0.9), 0.2 * (0.3 + 0.2), -0.1]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    # Target fallback where θ_y + m > π, as ArcFace.
    assert target_value(lambda c, y: LF.curricularface_logits(c, y, 0.5, 0.0), -0.95) == pytest.approx(
        -0.95 - 0.5 * math.sin(math.pi - 0.5)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_curricularface_changes_targets_and_only_hard_negatives(dtype: torch.dtype) -> None:
    cos, labels = random_cos(dtype)
    t = 0.2
    out = LF.curricularface_logits(cos, labels, 0.5, t)
    assert out.dtype == dtype
    target = cos.gather(1, labels[:, None]).double().clamp(-1, 1)
    threshold = torch.cos(torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7)) + 0.5)
    onehot = F.one_hot(labels, C).bool()
    hard = (cos.double() > threshold) & ~onehot
    easy = ~hard & ~onehot
    assert torch.equal(out[easy], cos[easy])
    torch.testing.assert_close(out[hard], cos[hard] * (t + cos[hard]))
    assert hard.any() and easy.any()


def curricular_reference(cos: torch.Tensor, y: torch.Tensor, t: torch.Tensor, m: float, s: float):
    """Official HuangYG123/CurricularFace ``head/metrics.py`` forward, written out (t updated before use)."""
    cos = cos.clamp(-1, 1)
    target = cos[torch.arange(len(y)), y].reshape(-1, 1)
    sin = torch.sqrt(1.0 - target**2)
    cos_theta_m = target * math.cos(m) - sin * math.sin(m)
    mask = cos > cos_theta_m
    final = torch.where(target > math.cos(math.pi - m), cos_theta_m, target - math.sin(math.pi - m) * m)
    t = target.mean().detach() * 0.01 + (1 - 0.01) * t
    out = cos.clone()
    out[mask] = cos[mask] * (t + cos[mask])
    out = out.scatter(1, y.reshape(-1, 1), final)
    return out * s, t


def test_curricularface_head_matches_official_form_over_steps() -> None:
    torch.manual_seed(0)
    head = CurricularFaceHead(D, C).double()
    t = torch.zeros((), dtype=torch.float64)
    for _ in range(3):
        x, y = torch.randn(B, D, dtype=torch.float64), torch.randint(0, C, (B,))
        # Pull samples towards their class so that t moves and hard negatives appear.
        x = x + 3 * F.normalize(head.weight[y].detach())
        logits, t = curricular_reference(full_cos(x, head.weight), y, t, 0.5, 64.0)
        out = head(x, y)
        torch.testing.assert_close(out.logits, logits)
        torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
        torch.testing.assert_close(head.t, t)
    assert float(head.t) > 0
    assert head.log_values()["curricular_t"] == head.t


def test_curricularface_fallback_target_keeps_the_official_hard_negative_threshold() -> None:
    # θ_y = 3.0 > π − m: the target takes the fallback cos θ_y − m·sin(π − m) ≈ −1.230, but hard negatives are still
    # those above cos(θ_y + m) = cos 3.5 ≈ −0.936 (official head/metrics.py). Negatives in between (−0.96, −1.0) must
    # stay unchanged; −0.93 and 0.1 are hard and reweighted.
    m, t, s = 0.5, torch.tensor(0.2, dtype=torch.float64), 64.0
    target = math.cos(3.0)
    cos = torch.tensor([[target, -0.96, -1.0, -0.93, 0.1], [0.5, 0.7, -0.96, 0.2, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    assert target - m * math.sin(math.pi - m) < -1.0 < -0.96 < math.cos(3.0 + m) < -0.93
    expected, t_next = curricular_reference(cos, y, t, m, s)  # t is updated before use, as in the official code
    out = LF.curricularface_logits(cos, y, m, t_next)
    torch.testing.assert_close(out * s, expected)
    assert out[0, 1] == -0.96 and out[0, 2] == -1.0
    torch.testing.assert_close(out[0, 3], torch.tensor(-0.93 * (float(t_next) - 0.93), dtype=torch.float64))
    # The head's own margin (what its forward uses) gives the same.
    head = CurricularFaceHead(D, 5, margin=m).double()
    head.t.fill_(float(t_next))
    torch.testing.assert_close(head.margin(cos, y) * s, expected)
