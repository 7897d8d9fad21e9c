"""Unit tests of the extra heads (combined margin, CurricularFace, AdaFace, MagFace, Sub-center ArcFace), the adaptive
cam-softmax c policy, and the numerical robustness (cos = ±1, bf16 autocast) of every head."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from facetrain.losses import (
    AdaFaceHead,
    AdaptiveC,
    ArcFaceHead,
    CamSoftmaxHead,
    CombinedMarginHead,
    CosFaceHead,
    CurricularFaceHead,
    FaceHead,
    FixedC,
    LinearC,
    MagFaceHead,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    SubCenterArcFaceHead,
)
from facetrain.losses import functional as LF
from facetrain.utils.instantiate import instantiate

B, D, C = 6, 16, 7
MarginFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def target_value(fn: MarginFn, cos_value: float, others: tuple[float, ...] = (0.25,)) -> float:
    """Applies ``fn`` to a float64 1×(1+len(others)) matrix whose target entry (class 0) is ``cos_value``."""
    cos = torch.tensor([[cos_value, *others]], dtype=torch.float64)
    return float(fn(cos, torch.tensor([0]))[0, 0])


def targets_on_grid(fn: MarginFn, t: torch.Tensor) -> torch.Tensor:
    """Target values of ``fn`` for every cosine in ``t`` (one sample per row, target class 0)."""
    cos = torch.stack([t, torch.zeros_like(t)], dim=1)
    return fn(cos, torch.zeros(len(t), dtype=torch.long))[:, 0]


def random_cos(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A B×C cosine matrix with exact ±1 and 0 targets mixed with random values, plus labels."""
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(B, C, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    labels = torch.randint(0, C, (B,), generator=g)
    cos[0, labels[0]], cos[1, labels[1]], cos[2, labels[2]] = 1.0, -1.0, 0.0
    return cos, labels


# Functional forms whose only change is on the target entries (CurricularFace is tested separately).
TARGET_ONLY_FORMS: dict[str, MarginFn] = {
    "combined": lambda cos, y: LF.combined_logits(cos, y),
    "combined_m1": lambda cos, y: LF.combined_logits(cos, y, 1.5, 0.2, 0.1),
    "adaface": lambda cos, y: LF.adaface_logits(cos, y, torch.linspace(-1, 1, cos.shape[0])),
    "magface": lambda cos, y: LF.magface_logits(cos, y, torch.linspace(5, 120, cos.shape[0])),
}


# ----------------------------------------------------------------------------------------------------------------------
# Closed-form values of the functional forms
# ----------------------------------------------------------------------------------------------------------------------


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


def test_magface_closed_form() -> None:
    norms = torch.tensor([5.0, 10.0, 60.0, 110.0, 500.0], dtype=torch.float64)
    margins = LF.magface_margin(norms)
    torch.testing.assert_close(margins, torch.tensor([0.45, 0.45, 0.625, 0.8, 0.8], dtype=torch.float64))
    reg = LF.magface_regularizer(norms)
    a = norms.clamp(10, 110)
    torch.testing.assert_close(reg, a / 110**2 + 1 / a)
    assert float(reg[2]) == pytest.approx(60 / 12100 + 1 / 60)
    fn = lambda c, y: LF.magface_logits(c, y, torch.tensor([60.0], dtype=torch.float64))  # noqa: E731
    assert target_value(fn, 0.5) == pytest.approx(math.cos(math.pi / 3 + 0.625))
    assert target_value(fn, -0.95) == pytest.approx(-0.95 - 0.625 * math.sin(math.pi - 0.625))


def test_subcenter_closed_form() -> None:
    # Two classes with k = 2: columns (0,0) (0,1) (1,0) (1,1).
    cos = torch.tensor([[0.1, 0.5, -0.3, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(LF.subcenter_max(cos, 2), torch.tensor([[0.5, 0.2]], dtype=torch.float64))
    out = LF.subcenter_arcface_logits(cos, torch.tensor([0]), k=2, m=0.5)
    torch.testing.assert_close(out, torch.tensor([[math.cos(math.pi / 3 + 0.5), 0.2]], dtype=torch.float64))
    assert torch.equal(
        LF.subcenter_arcface_logits(cos, torch.tensor([1]), k=1, m=0.5), LF.arcface_logits(cos, torch.tensor([1]), 0.5)
    )


@pytest.mark.parametrize("name", sorted(TARGET_ONLY_FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_only_targets_change(name: str, dtype: torch.dtype) -> None:
    cos, labels = random_cos(dtype)
    out = TARGET_ONLY_FORMS[name](cos, labels)
    assert out.dtype == dtype and out.shape == cos.shape
    onehot = F.one_hot(labels, C).bool()
    assert torch.equal(out[~onehot], cos[~onehot])
    assert not torch.equal(out[onehot], cos[onehot])


FINITE_FORMS: dict[str, MarginFn] = {
    **TARGET_ONLY_FORMS,
    "curricularface": lambda cos, y: LF.curricularface_logits(cos, y, 0.5, 0.3),
    "subcenter": lambda cos, y: LF.subcenter_arcface_logits(torch.cat([cos, cos * 0.5], dim=1), y, k=2),
}


@pytest.mark.parametrize("name", sorted(FINITE_FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_functional_finite_gradients_at_plus_minus_one(name: str, dtype: torch.dtype) -> None:
    cos, labels = random_cos(dtype)
    cos.requires_grad_(True)
    out = FINITE_FORMS[name](cos, labels)
    (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()


# ----------------------------------------------------------------------------------------------------------------------
# Heads against straightforward full-matrix implementations (one-hot masks, acos over the whole matrix)
# ----------------------------------------------------------------------------------------------------------------------


def full_cos(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.normalize(x) @ F.normalize(w).T


def arcface_full(cos: torch.Tensor, onehot: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """Pre-2022 InsightFace ArcFace: cos·cos m − sin·sin m, fallback cos − m·sin(π − m) where cos <= cos(π − m)."""
    m = torch.as_tensor(m, dtype=cos.dtype)
    sin = torch.sqrt((1 - cos**2).clamp_min(0))
    phi = cos * torch.cos(m) - sin * torch.sin(m)
    phi = torch.where(cos > torch.cos(math.pi - m), phi, cos - torch.sin(math.pi - m) * m)
    return torch.where(onehot, phi, cos)


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


def test_magface_head_matches_official_form_including_gradients() -> None:
    torch.manual_seed(0)
    head = MagFaceHead(D, C).double()
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
    logits = 64 * arcface_full(full_cos(x, head.weight).clamp(-1, 1), F.one_hot(y, C).bool(), margin)
    loss = F.cross_entropy(logits, y) + 35 * (a / 110**2 + 1 / a).mean()
    loss.backward()
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(grad_head, x.grad)
    assert (a > 10).any() and (a < 110).any()


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


# ----------------------------------------------------------------------------------------------------------------------
# Every head: finite at cos = ±1 and under bf16 / fp16 autocast (the dtype matrix)
# ----------------------------------------------------------------------------------------------------------------------

ALL_HEADS: dict[str, Callable[[], FaceHead]] = {
    "softmax": lambda: SoftmaxHead(D, C),
    "normface": lambda: NormFaceHead(D, C),
    "sphereface": lambda: SphereFaceHead(D, C),
    "sphereface_fixed_scale": lambda: SphereFaceHead(D, C, scale=30.0, lambda_min=0.0, lambda_base=0.0),
    "cosface": lambda: CosFaceHead(D, C),
    "arcface": lambda: ArcFaceHead(D, C),
    "cam_softmax_linear": lambda: CamSoftmaxHead(D, C),
    "cam_softmax_fixed": lambda: CamSoftmaxHead(D, C, c_policy=FixedC(math.pi / 4)),
    "cam_softmax_adaptive": lambda: CamSoftmaxHead(D, C, c_policy=AdaptiveC()),
    "combined": lambda: CombinedMarginHead(D, C),
    "curricularface": lambda: CurricularFaceHead(D, C, t_init=0.5),
    "adaface": lambda: AdaFaceHead(D, C),
    "magface": lambda: MagFaceHead(D, C),
    "subcenter_arcface": lambda: SubCenterArcFaceHead(D, C),
}


def aligned_batch(head: FaceHead, sign: float, norm: float = 30.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings exactly parallel (sign = 1) or anti-parallel (−1) to their class weight, so cos θ_y = ±1."""
    y = torch.arange(B) % C
    if isinstance(head, SoftmaxHead):
        w = head.fc.weight
    elif isinstance(head, SubCenterArcFaceHead):
        # The class cosine is a max over sub-centres: all of them must point the same way for cos θ_y = −1.
        with torch.no_grad():
            grouped = head.weight.view(C, head.k, D)
            grouped.copy_(grouped[:, :1].expand_as(grouped))
        w = head.weight[:: head.k]
    else:
        w = head.weight
    x = sign * norm * F.normalize(w[y].detach().clone())
    return x.requires_grad_(), y


AUTOCAST = {"fp32": None, "bf16_autocast": torch.bfloat16, "fp16_autocast": torch.float16}


def assert_finite_step(head: FaceHead, x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None) -> None:
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = head(x, y)
    if autocast is not None and not isinstance(head, SoftmaxHead):  # the matmul really ran in the low precision
        assert out.cosine.dtype == autocast
    assert torch.isfinite(out.loss), out.loss
    assert torch.isfinite(out.logits.float()).all()
    out.loss.backward()
    head.on_optimizer_step()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert all(torch.isfinite(v).all() for v in head.log_values().values())
    assert all(torch.isfinite(b).all() for b in head.buffers())


@pytest.mark.parametrize("name", sorted(ALL_HEADS))
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("autocast", list(AUTOCAST))
def test_every_head_finite_at_plus_minus_one(name: str, sign: float, autocast: str) -> None:
    torch.manual_seed(0)
    head = ALL_HEADS[name]()
    x, y = aligned_batch(head, sign)
    if not isinstance(head, SoftmaxHead):
        cos = head.cosine(x.detach()).gather(1, y[:, None])
        torch.testing.assert_close(cos, torch.full_like(cos, sign))
    assert_finite_step(head, x, y, AUTOCAST[autocast])


@pytest.mark.parametrize("name", sorted(ALL_HEADS))
@pytest.mark.parametrize("autocast", ["bf16_autocast", "fp16_autocast"])
def test_every_head_finite_under_autocast(name: str, autocast: str) -> None:
    torch.manual_seed(0)
    head = ALL_HEADS[name]()
    x, y = (torch.randn(B, D) * 5).requires_grad_(), torch.randint(0, C, (B,))
    assert_finite_step(head, x, y, AUTOCAST[autocast])


@pytest.mark.parametrize("name", sorted(n for n in ALL_HEADS if n != "softmax"))
@pytest.mark.parametrize("autocast", ["bf16_autocast", "fp16_autocast"])
def test_autocast_loss_matches_fp32(name: str, autocast: str) -> None:
    """Margins are computed in fp32 under autocast: the loss stays within the low-precision matmul's error."""
    torch.manual_seed(0)
    head = ALL_HEADS[name]().eval()  # eval: stateful heads (CurricularFace t, AdaFace stats) do not move
    x, y = torch.randn(B, D) * 5, torch.randint(0, C, (B,))
    reference = head(x, y).loss
    with torch.autocast("cpu", dtype=AUTOCAST[autocast]):
        low = head(x, y).loss
    assert low.dtype == torch.float32
    tolerance = 0.05 * max(1.0, float(reference.abs()))  # bf16 has 8 mantissa bits: cos errors ~4e-3, times s=64
    assert abs(float(low) - float(reference)) < tolerance, (float(low), float(reference))


@pytest.mark.parametrize("name", sorted(n for n in ALL_HEADS if n != "softmax"))
def test_margin_probe_has_no_side_effects(name: str) -> None:
    """``head.margin(cos, labels)`` (as a margin-curve plot calls it, float64, training mode) must not touch state."""
    head = ALL_HEADS[name]().train()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    cos = torch.cos(torch.linspace(0, math.pi, 181, dtype=torch.float64))
    out = head.margin(torch.stack([cos, torch.zeros_like(cos)], dim=1), torch.zeros(181, dtype=torch.long))
    assert out.shape == (181, 2) and torch.isfinite(out).all()
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())


# ----------------------------------------------------------------------------------------------------------------------
# Buffer state: CurricularFace t, AdaFace norm statistics
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: CurricularFaceHead(D, C), lambda: AdaFaceHead(D, C)], ids=["curricular", "ada"]
)
def test_buffer_state_survives_state_dict_round_trip(make: Callable[[], FaceHead]) -> None:
    torch.manual_seed(0)
    batches = [(torch.randn(B, D) * (i + 2), torch.randint(0, C, (B,))) for i in range(6)]
    head = make()
    for x, y in batches[:3]:
        head(x, y)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    restored = make()
    before = {k: v.clone() for k, v in restored.state_dict().items()}
    restored.load_state_dict(state)
    buffers = [k for k, _ in head.named_buffers()]
    assert buffers and any(not torch.equal(before[k], state[k]) for k in buffers)
    for x, y in batches[3:]:
        assert torch.equal(head(x, y).loss, restored(x, y).loss)
    for k in buffers:
        assert torch.equal(head.state_dict()[k], restored.state_dict()[k])


@pytest.mark.parametrize(
    "make", [lambda: CurricularFaceHead(D, C), lambda: AdaFaceHead(D, C)], ids=["curricular", "ada"]
)
def test_eval_mode_does_not_update_buffers(make: Callable[[], FaceHead]) -> None:
    head = make().eval()
    before = [b.clone() for b in head.buffers()]
    head(torch.randn(B, D), torch.randint(0, C, (B,)))
    assert all(torch.equal(a, b) for a, b in zip(before, head.buffers(), strict=True))


# ----------------------------------------------------------------------------------------------------------------------
# Adaptive cam-softmax c
# ----------------------------------------------------------------------------------------------------------------------


def test_adaptive_policy_rule_never_increases_bounded_step_limited() -> None:
    policy = AdaptiveC(start=1.5, c_min=0.7, momentum=0.3, max_step=0.02)
    g = torch.Generator().manual_seed(0)
    c, ema = torch.tensor(1.5, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    values = [float(c)]
    # Random angles (the EMA goes up and down), then angles far below c_min.
    observations = [torch.rand((), generator=g, dtype=torch.float64) * math.pi for _ in range(300)]
    for theta in observations + [torch.tensor(0.1, dtype=torch.float64)] * 100:
        ema = policy.observe(ema, theta)
        c = policy.update(c, ema)
        values.append(float(c))
    diffs = torch.diff(torch.tensor(values, dtype=torch.float64))
    assert (diffs <= 0).all()
    assert (diffs >= -0.02 - 1e-12).all()
    assert min(values) >= 0.7 and max(values) <= 1.5
    assert values[-1] == pytest.approx(0.7)  # the floor
    assert (diffs == 0).any() and (diffs.abs() - 0.02).abs().min() < 1e-12  # held, and rate-limited at times
    # c follows the EMA down but not below it.
    c = policy.update(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64))
    assert float(c) == pytest.approx(0.99)


def run_adaptive(head: CamSoftmaxHead, batches, accumulate: int = 1) -> list[float]:
    values = []
    for i, (x, y) in enumerate(batches):
        head(x, y)
        if (i + 1) % accumulate == 0:
            head.on_optimizer_step()
            values.append(float(head.c))
    return values


def adaptive_batches(head: CamSoftmaxHead, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches that get closer to their class weights over time, with random (far) batches in between."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        y = torch.randint(0, C, (B,), generator=g)
        noise = torch.randn(B, D, generator=g)
        pull = 0.0 if i % 5 == 4 else 0.3 * i
        batches.append((noise + pull * F.normalize(head.weight[y].detach()) * 4, y))
    return batches


def test_adaptive_head_c_sequence_properties() -> None:
    torch.manual_seed(0)
    policy = AdaptiveC(start=math.pi / 2, c_min=0.9, momentum=0.2, max_step=0.01)
    head = CamSoftmaxHead(D, C, c_policy=policy)
    values = [float(head.c)] + run_adaptive(head, adaptive_batches(head, 80))
    diffs = torch.diff(torch.tensor(values, dtype=torch.float64))
    assert (diffs <= 0).all() and (diffs >= -0.01 - 1e-12).all()
    assert min(values) >= 0.9 and max(values) <= math.pi / 2
    assert values[-1] < values[0]  # it did adapt
    assert min(values) == pytest.approx(0.9)
    logged = head.log_values()
    assert set(logged) == {"cam_c", "cam_theta"} and float(logged["cam_c"]) == values[-1]
    assert int(head.step) == 80 and int(head.theta_count) == 0


def test_adaptive_head_resume_is_exact_even_with_pending_observations() -> None:
    torch.manual_seed(0)
    policy = AdaptiveC(momentum=0.1, max_step=0.005, c_min=0.8)
    head = CamSoftmaxHead(D, C, c_policy=policy)
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    batches = adaptive_batches(head, 41)
    reference = run_adaptive(head, batches)

    first = CamSoftmaxHead(D, C, c_policy=policy)
    first.load_state_dict(initial)
    values = run_adaptive(first, batches[:20])
    first(*batches[20])  # observed but no optimizer step yet when the checkpoint is taken
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert int(state["theta_count"]) == B

    torch.manual_seed(2)
    resumed = CamSoftmaxHead(D, C, c_policy=policy)
    resumed.load_state_dict(state)
    resumed.on_optimizer_step()
    values += [float(resumed.c)] + run_adaptive(resumed, batches[21:])
    assert values == reference
    assert float(resumed.c) < math.pi / 2


def test_adaptive_head_accumulates_micro_batches_and_ignores_eval() -> None:
    torch.manual_seed(0)
    head = CamSoftmaxHead(D, C, c_policy=AdaptiveC(momentum=1.0, max_step=1.0, c_min=0.1))
    (x1, y1), (x2, y2) = adaptive_batches(head, 2)
    x2 = x2 + 10 * F.normalize(head.weight[y2].detach())
    angles = torch.cat([torch.acos(head.cosine(x).gather(1, y[:, None]).double()) for x, y in ((x1, y1), (x2, y2))])
    head(x1, y1)
    head(x2, y2)
    head.eval()
    head(torch.randn(B, D), torch.randint(0, C, (B,)))  # validation batches do not count
    head.train()
    head.on_optimizer_step()
    torch.testing.assert_close(head.theta_ema, angles.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(head.c, angles.mean().clamp(0.1, math.pi / 2), rtol=1e-6, atol=1e-6)
    # A step without any training forward leaves the EMA alone.
    ema = head.theta_ema.clone()
    head.on_optimizer_step()
    assert torch.equal(head.theta_ema, ema)


def test_step_policies_unchanged_and_have_no_adaptive_buffers() -> None:
    head = CamSoftmaxHead(D, C, c_policy=LinearC(1.5, 1.0, 0.1))
    assert set(dict(head.named_buffers())) == {"c", "step"}
    head(torch.randn(B, D), torch.randint(0, C, (B,)))
    head.on_optimizer_step()
    assert float(head.c) == pytest.approx(1.4)
    assert set(head.log_values()) == {"cam_c"}


@pytest.mark.parametrize("policy", ["fixed", "linear", "adaptive"])
def test_c_policy_group_composes_and_builds(compose_cfg, policy: str) -> None:
    cfg = compose_cfg("loss=cam_softmax", f"loss/c_policy={policy}")
    head = instantiate(cfg.loss)(embedding_size=D, num_classes=C)
    assert isinstance(head.c_policy, {"fixed": FixedC, "linear": LinearC, "adaptive": AdaptiveC}[policy])
    head(torch.randn(B, D), torch.randint(0, C, (B,))).loss.backward()
    head.on_optimizer_step()


def test_default_c_policy_is_the_official_linear_schedule(compose_cfg) -> None:
    head = instantiate(compose_cfg("loss=cam_softmax").loss)(embedding_size=D, num_classes=C)
    assert head.c_policy == LinearC()


# ----------------------------------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: CombinedMarginHead(D, C, m1=0.5), "m1"),
        (lambda: CombinedMarginHead(D, C, m2=-0.1), "m2"),
        (lambda: CombinedMarginHead(D, C, m2=math.pi), "m2"),
        (lambda: CombinedMarginHead(D, C, m3=float("nan")), "m3"),
        (lambda: CombinedMarginHead(D, C, scale=0.0), "scale"),
        (lambda: CurricularFaceHead(D, C, margin=-0.5), "margin"),
        (lambda: CurricularFaceHead(D, C, momentum=1.5), "momentum"),
        (lambda: CurricularFaceHead(D, C, t_init=2.0), "t_init"),
        (lambda: AdaFaceHead(D, C, margin=-0.4), "margin"),
        (lambda: AdaFaceHead(D, C, h=0.0), "h"),
        (lambda: AdaFaceHead(D, C, t_alpha=-0.01), "t_alpha"),
        (lambda: MagFaceHead(D, C, l_a=0.0), "l_a"),
        (lambda: MagFaceHead(D, C, u_a=5.0), "u_a"),
        (lambda: MagFaceHead(D, C, l_m=-0.1), "l_m"),
        (lambda: MagFaceHead(D, C, u_m=0.3), "u_m"),
        (lambda: MagFaceHead(D, C, lambda_g=-1.0), "lambda_g"),
        (lambda: SubCenterArcFaceHead(D, C, k=0), "k"),
        (lambda: SubCenterArcFaceHead(D, C, k=2.5), "k"),
        (lambda: SubCenterArcFaceHead(D, C, margin=4.0), "margin"),
        (lambda: SubCenterArcFaceHead(D, 1), "num_classes"),
        (lambda: AdaptiveC(start=2.0), "start"),
        (lambda: AdaptiveC(c_min=0.0), "c_min"),
        (lambda: AdaptiveC(start=1.0, c_min=1.2), "c_min"),
        (lambda: AdaptiveC(momentum=0.0), "momentum"),
        (lambda: AdaptiveC(max_step=-1e-4), "max_step"),
        (lambda: CamSoftmaxHead(D, C, c_policy=object()), "c_policy"),
        (lambda: LF.combined_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), m1=0.0), "m1"),
        (lambda: LF.curricularface_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), m=-1.0), "m"),
        (lambda: LF.adaface_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0.0, m=-1.0), "m"),
        (lambda: LF.magface_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(3)), "norms"),
        (lambda: LF.subcenter_max(torch.zeros(2, 5), 2), "k"),
        (lambda: LF.combined_logits(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), "labels"),
    ],
)
def test_bad_arguments_are_rejected_with_their_name(factory: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
