"""Unit tests of the margin functions (facetrain.losses.functional) and the heads (facetrain.losses)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from facetrain.losses import (
    ArcFaceHead,
    CamSoftmaxHead,
    CosFaceHead,
    CosineHead,
    FixedC,
    HeadOutput,
    LinearC,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceHead,
)
from facetrain.losses import functional as LF

HALF_PI = math.pi / 2
MarginFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def target_value(fn: MarginFn, cos_value: float, dtype: torch.dtype = torch.float64) -> float:
    """Applies ``fn`` to a 1×2 matrix whose target entry (class 0) is ``cos_value``."""
    cos = torch.tensor([[cos_value, 0.25]], dtype=dtype)
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


ALL_FORMS: dict[str, MarginFn] = {
    "normface": LF.normface_logits,
    "cosface": lambda cos, y: LF.cosface_logits(cos, y, 0.35),
    "arcface": lambda cos, y: LF.arcface_logits(cos, y, 0.5),
    "arcface_easy": lambda cos, y: LF.arcface_logits(cos, y, 0.5, easy_margin=True),
    "sphereface": lambda cos, y: LF.sphereface_logits(cos, y, 4, 0.0),
    "sphereface_lambda": lambda cos, y: LF.sphereface_logits(cos, y, 3, 5.0),
    "cam": lambda cos, y: LF.cam_softmax_logits(cos, y, math.pi / 3),
}


# ----------------------------------------------------------------------------------------------------------------------
# Closed-form values
# ----------------------------------------------------------------------------------------------------------------------


def test_arcface_closed_form() -> None:
    assert target_value(lambda c, y: LF.arcface_logits(c, y, 0.5), 0.5) == pytest.approx(math.cos(math.pi / 3 + 0.5))
    assert target_value(lambda c, y: LF.arcface_logits(c, y, 0.2), 0.0) == pytest.approx(math.cos(HALF_PI + 0.2))
    # θ = acos(−0.95) > π − 0.5: fallback cos − m·sin(π − m).
    expected = -0.95 - 0.5 * math.sin(math.pi - 0.5)
    assert target_value(lambda c, y: LF.arcface_logits(c, y, 0.5), -0.95) == pytest.approx(expected)


def test_cosface_closed_form() -> None:
    assert target_value(lambda c, y: LF.cosface_logits(c, y, 0.35), 0.8) == pytest.approx(0.45)
    assert target_value(lambda c, y: LF.cosface_logits(c, y, 0.4), -1.0) == pytest.approx(-1.4)


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


@pytest.mark.parametrize(
    ("c", "table"),
    [
        (HALF_PI, {0.9: 0.900, 0.5: 0.500, 0.0: 0.000}),
        (1.2, {0.9: 0.823, 0.5: 0.190, 0.0: -0.428}),
        (math.pi / 3, {0.9: 0.768, 0.5: 0.000, 0.0: -0.624}),
        (math.pi / 4, {0.9: 0.598, 0.5: -0.432, 0.0: -0.904}),
    ],
)
def test_cam_softmax_table_values(c: float, table: dict[float, float]) -> None:
    """protocols.md §1.2 table (3 decimals) and the official code's algebraic form (exact)."""
    for cos_value, rounded in table.items():
        value = target_value(lambda cos, y, c=c: LF.cam_softmax_logits(cos, y, c), cos_value)
        assert value == pytest.approx(rounded, abs=6e-4)
        assert value == pytest.approx(cam_reference(cos_value, c), abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Only target entries change; full-matrix reference; cost
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_only_targets_change(name: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    cos = (torch.rand(8, 7, generator=generator) * 2 - 1).to(dtype)
    labels = torch.randint(0, 7, (8,), generator=generator)
    out = ALL_FORMS[name](cos, labels)
    assert out.dtype == dtype
    assert out.shape == cos.shape
    non_target = ~F.one_hot(labels, 7).bool()
    assert torch.equal(out[non_target], cos[non_target])
    assert torch.isfinite(out).all()


def full_matrix_forms(m_arc: float = 0.5, m_cos: float = 0.35, m_sphere: int = 4, lam: float = 2.0, c: float = 1.1):
    """Straightforward implementations that evaluate the formula on the whole matrix and select with a one-hot mask."""
    c_ = 1 / (1 - math.log2(math.cos(c) + 1))

    def arcface(cos: torch.Tensor, easy: bool) -> torch.Tensor:
        margined = torch.cos(torch.acos(cos) + m_arc)
        if easy:
            return torch.where(cos > 0, margined, cos)
        return torch.where(cos > math.cos(math.pi - m_arc), margined, cos - m_arc * math.sin(m_arc))

    return {
        "normface": (LF.normface_logits, lambda cos: cos),
        "cosface": (lambda cos, y: LF.cosface_logits(cos, y, m_cos), lambda cos: cos - m_cos),
        "arcface": (lambda cos, y: LF.arcface_logits(cos, y, m_arc), lambda cos: arcface(cos, False)),
        "arcface_easy": (lambda cos, y: LF.arcface_logits(cos, y, m_arc, True), lambda cos: arcface(cos, True)),
        "sphereface": (
            lambda cos, y: LF.sphereface_logits(cos, y, m_sphere, lam),
            lambda cos: (lam * cos + psi_reference(torch.acos(cos), m_sphere)) / (1 + lam),
        ),
        "cam": (lambda cos, y: LF.cam_softmax_logits(cos, y, c), lambda cos: 2 * ((cos + 1) / 2) ** c_ - 1),
    }


@pytest.mark.parametrize("name", sorted(full_matrix_forms()))
def test_matches_full_matrix_reference(name: str) -> None:
    fn, elementwise = full_matrix_forms()[name]
    generator = torch.Generator().manual_seed(1)
    cos = torch.rand(64, 11, generator=generator, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 11, (64,), generator=generator)
    one_hot = F.one_hot(labels, 11).bool()
    expected = torch.where(one_hot, elementwise(cos), cos)
    torch.testing.assert_close(fn(cos, labels), expected, rtol=1e-10, atol=1e-10)


class _RecordOps(TorchDispatchMode):
    """Records the aten ops that receive a tensor of a given shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if any(isinstance(a, torch.Tensor) and tuple(a.shape) == self.shape for a in (*args, *kwargs.values())):
            self.ops.add(func.overloadpacket.__name__)
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(ALL_FORMS))
def test_full_matrix_only_gathered_and_scattered(name: str) -> None:
    """The forward touches the B×C matrix only through gather and scatter; no elementwise maths over all classes."""
    cos = (torch.rand(3, 50) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 7, 49])
    recorder = _RecordOps((3, 50))
    with recorder:
        ALL_FORMS[name](cos, labels)
    assert recorder.ops <= {"gather", "scatter"}


# ----------------------------------------------------------------------------------------------------------------------
# Cam-softmax properties
# ----------------------------------------------------------------------------------------------------------------------

C_GRID = [math.pi / 4, 0.9, 1.0, 1.2, math.pi / 3, 1.5, HALF_PI]


@pytest.mark.parametrize("c", C_GRID)
def test_cam_softmax_fixed_points(c: float) -> None:
    fn = lambda cos, y: LF.cam_softmax_logits(cos, y, c)  # noqa: E731
    assert target_value(fn, math.cos(c)) == pytest.approx(0.0, abs=1e-12)
    assert target_value(fn, 1.0) == 1.0
    assert target_value(fn, -1.0) == -1.0


@pytest.mark.parametrize("c", C_GRID)
def test_cam_softmax_monotone(c: float) -> None:
    t = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    values = targets_on_grid(lambda cos, y: LF.cam_softmax_logits(cos, y, c), t)
    assert (values.diff() >= 0).all()
    # Strictly increasing wherever float64 resolves the steps (near −1, 2·u^c′ − 1 rounds to −1 for large c′).
    assert (values[t > -0.9].diff() > 0).all()
    # Never above the identity: the activation is a penalty on the target.
    assert (values <= t + 1e-12).all()


def test_cam_softmax_half_pi_is_normface() -> None:
    cos = torch.rand(16, 9, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 9, (16,))
    torch.testing.assert_close(LF.cam_softmax_logits(cos, labels, HALF_PI), cos, rtol=0, atol=1e-15)
    # A float32 tensor holding π/2 rounds above the float64 value (cos c < 0, c′ < 1 before the clamp).
    c32 = torch.tensor(HALF_PI, dtype=torch.float32)
    torch.testing.assert_close(LF.cam_softmax_logits(cos, labels, c32), cos, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "c", [math.pi / 4, 1.0, HALF_PI, torch.tensor(HALF_PI), torch.tensor(HALF_PI, dtype=torch.float64)]
)
def test_cam_softmax_finite_at_endpoints(dtype: torch.dtype, c: float | torch.Tensor) -> None:
    cos = torch.tensor([[-1.0, 0.3], [1.0, 0.3], [0.0, -1.0], [0.0, 1.0]], dtype=dtype, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    out = LF.cam_softmax_logits(cos, labels, c)
    (out * torch.arange(1, 9, dtype=dtype).view(4, 2)).sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(cos.grad).all()
    assert float(out[0, 0].detach()) == -1.0
    assert float(out[1, 0].detach()) == 1.0


def test_cam_softmax_tensor_c_gets_no_gradient() -> None:
    c = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    cos = torch.tensor([[-1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    LF.cam_softmax_logits(cos, torch.tensor([0]), c).sum().backward()
    assert c.grad is None
    assert torch.isfinite(cos.grad).all()


@pytest.mark.parametrize("c", [0.0, -0.1, 1.6, math.inf, math.nan, torch.tensor(2.0)])
def test_cam_softmax_rejects_bad_c(c: float | torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"cam-softmax c must be in \(0, pi/2\]"):
        LF.cam_softmax_logits(torch.zeros(2, 3), torch.tensor([0, 1]), c)


# ----------------------------------------------------------------------------------------------------------------------
# Finite gradients at ±1 and gradcheck
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients_at_plus_minus_one(name: str, dtype: torch.dtype) -> None:
    # Slightly outside [-1, 1] too, as a matmul of unit vectors can produce.
    cos = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [1.0000001, 0.0], [-1.0000001, 0.0]], dtype=dtype)
    cos.requires_grad_()
    out = ALL_FORMS[name](cos, torch.zeros(4, dtype=torch.long))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(cos.grad).all()


def _target_grads(fn: MarginFn, dtype: torch.dtype = torch.float64) -> tuple[float, float]:
    """d target / d cos at cos = −1 and cos = +1."""
    cos = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=dtype, requires_grad=True)
    fn(cos, torch.tensor([0, 0]))[:, 0].sum().backward()
    return float(cos.grad[0, 0]), float(cos.grad[1, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_at_plus_minus_one_are_the_derivative(dtype: torch.dtype) -> None:
    """The [-1, 1] clamp must not zero the gradient of targets sitting exactly on the boundary."""
    assert _target_grads(lambda c, y: LF.cosface_logits(c, y, 0.35), dtype) == (1.0, 1.0)
    # T_4'(±1) = ±16 and ψ = ±T_4 − 2k, so dψ/dcos = 16 at both ends.
    assert _target_grads(lambda c, y: LF.sphereface_logits(c, y, 4), dtype) == pytest.approx((16.0, 16.0))
    assert _target_grads(lambda c, y: LF.cam_softmax_logits(c, y, HALF_PI), dtype) == pytest.approx((1.0, 1.0))
    c_prime = 1 / (1 - math.log2(math.cos(1.0) + 1))
    assert _target_grads(lambda c, y: LF.cam_softmax_logits(c, y, 1.0), dtype) == pytest.approx((0.0, c_prime))
    low, high = _target_grads(lambda c, y: LF.arcface_logits(c, y, 0.5), dtype)
    assert low == pytest.approx(1.0)  # fallback region: cos − m·sin(π − m)
    assert 100.0 < high < 1e9  # d cos(θ + m)/d cos θ = cos m + sin m·cos θ/sin θ diverges at θ = 0; kept finite


@pytest.mark.parametrize("name", sorted(ALL_FORMS))
def test_gradcheck(name: str) -> None:
    generator = torch.Generator().manual_seed(2)
    # Away from ±1 (clamps) and from the ArcFace fallback switch at cos(π − 0.5) ≈ −0.88.
    cos = (torch.rand(5, 4, generator=generator, dtype=torch.float64) * 1.6 - 0.75).requires_grad_()
    labels = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda x: ALL_FORMS[name](x, labels), (cos,))


# ----------------------------------------------------------------------------------------------------------------------
# ArcFace and SphereFace shapes over θ ∈ [0, π]
# ----------------------------------------------------------------------------------------------------------------------


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
def test_sphereface_functional_rejects_bad_m(m: object) -> None:
    with pytest.raises(ValueError, match="sphereface margin m must be an integer >= 1"):
        LF.sphereface_logits(torch.zeros(2, 3), torch.tensor([0, 1]), m)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------------

D, C, B = 16, 10, 12


def head_cases() -> dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., torch.Tensor]]]:
    """Head factories and the logits they must produce, written with the functional forms."""

    def cosine_logits(scale: float, margin: MarginFn) -> Callable[..., torch.Tensor]:
        return lambda head, x, y: scale * margin(F.normalize(x) @ F.normalize(head.weight).T, y)

    return {
        "normface": (lambda: NormFaceHead(D, C), cosine_logits(20.0, LF.normface_logits)),
        "cosface": (
            lambda: CosFaceHead(D, C, scale=30.0, margin=0.4),
            cosine_logits(30.0, lambda c, y: LF.cosface_logits(c, y, 0.4)),
        ),
        "arcface": (lambda: ArcFaceHead(D, C), cosine_logits(64.0, lambda c, y: LF.arcface_logits(c, y, 0.5))),
        "arcface_easy": (
            lambda: ArcFaceHead(D, C, margin=0.3, easy_margin=True),
            cosine_logits(64.0, lambda c, y: LF.arcface_logits(c, y, 0.3, True)),
        ),
        "sphereface": (
            lambda: SphereFaceHead(D, C),
            lambda head, x, y: (
                x.norm(dim=1, keepdim=True)
                * LF.sphereface_logits(F.normalize(x) @ F.normalize(head.weight).T, y, 4, 1000.0)
            ),
        ),
        "sphereface_fixed_scale": (
            lambda: SphereFaceHead(D, C, m=2, scale=30.0),
            cosine_logits(30.0, lambda c, y: LF.sphereface_logits(c, y, 2, 1000.0)),
        ),
        "cam_softmax": (
            lambda: CamSoftmaxHead(D, C),
            cosine_logits(20.0, lambda c, y: LF.cam_softmax_logits(c, y, HALF_PI)),
        ),
        "cam_softmax_fixed": (
            lambda: CamSoftmaxHead(D, C, scale=10.0, c_policy=FixedC(1.0)),
            cosine_logits(10.0, lambda c, y: LF.cam_softmax_logits(c, y, 1.0)),
        ),
        "softmax": (lambda: SoftmaxHead(D, C), lambda head, x, y: x @ head.fc.weight.T + head.fc.bias),
    }


@pytest.mark.parametrize("name", sorted(head_cases()))
def test_head_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    make, expected_logits = head_cases()[name]
    head = make()
    x = torch.randn(B, D, requires_grad=True)
    y = torch.randint(0, C, (B,))
    out = head(x, y)
    assert isinstance(out, HeadOutput)
    assert out.loss.shape == ()
    assert out.logits.shape == (B, C)
    assert out.cosine.shape == (B, C)
    logits = expected_logits(head, x, y)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
    cosine = F.normalize(x) @ F.normalize(head.fc.weight if name == "softmax" else head.weight).T
    torch.testing.assert_close(out.cosine, cosine)
    assert out.cosine.requires_grad == (name != "softmax")
    out.loss.backward()
    assert x.grad is not None
    assert x.grad.shape == (B, D)
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_head_weight_init_and_interface() -> None:
    head = ArcFaceHead(D, C)
    assert isinstance(head, CosineHead)
    assert head.weight.shape == (C, D)
    assert 0.005 < float(head.weight.detach().std()) < 0.02
    head.on_optimizer_step()
    assert head.log_values() == {}
    assert SoftmaxHead(D, C).log_values() == {}


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ArcFaceHead(D, C, margin=-0.1), "arcface margin must be >= 0, got -0.1"),
        (lambda: ArcFaceHead(D, C, margin=4.0), "arcface margin must be < pi, got 4.0"),
        (lambda: CosFaceHead(D, C, margin=-0.35), "cosface margin must be >= 0, got -0.35"),
        (lambda: CosFaceHead(D, C, scale=0.0), "CosFaceHead scale must be > 0, got 0.0"),
        (lambda: NormFaceHead(D, C, scale=-20.0), "NormFaceHead scale must be > 0, got -20.0"),
        (lambda: NormFaceHead(D, C, scale=math.nan), "NormFaceHead scale must be > 0, got nan"),
        (lambda: ArcFaceHead(D, 1), "ArcFaceHead num_classes must be an integer >= 2, got 1"),
        (lambda: ArcFaceHead(0, C), "ArcFaceHead embedding_size must be an integer >= 1, got 0"),
        (lambda: SoftmaxHead(D, 1), "SoftmaxHead num_classes must be an integer >= 2, got 1"),
        (lambda: SphereFaceHead(D, C, m=0), "sphereface margin m must be an integer >= 1, got 0"),
        (lambda: SphereFaceHead(D, C, m=1.35), "sphereface margin m must be an integer >= 1, got 1.35"),
        (lambda: SphereFaceHead(D, C, scale=0.0), "SphereFaceHead scale must be > 0, got 0.0"),
        (lambda: SphereFaceHead(D, C, lambda_min=-1.0), "sphereface lambda_min must be >= 0, got -1.0"),
        (lambda: CamSoftmaxHead(D, C, scale=-1.0), "CamSoftmaxHead scale must be > 0, got -1.0"),
        (lambda: CamSoftmaxHead(D, C, c_policy=object()), "c_policy must have initial"),  # type: ignore[arg-type]
        (lambda: LinearC(start=1.0, stop=1.2), "LinearC stop must be <= start"),
        (lambda: LinearC(start=1.6), "LinearC start must be in \\(0, pi/2\\].*got 1.6"),
        (lambda: LinearC(stop=0.0), "LinearC stop must be in \\(0, pi/2\\].*got 0.0"),
        (lambda: LinearC(decay=-1e-4), "LinearC decay must be >= 0, got -0.0001"),
        (lambda: FixedC(c=2.0), "FixedC c must be in \\(0, pi/2\\].*got 2.0"),
    ],
)
def test_constructors_reject_bad_arguments(factory: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


# ----------------------------------------------------------------------------------------------------------------------
# Schedules: SphereFace λ and cam-softmax c
# ----------------------------------------------------------------------------------------------------------------------


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


def test_linear_c_sequence() -> None:
    policy = LinearC()
    assert policy.initial() == HALF_PI
    assert [policy.value(k) for k in range(3)] == [HALF_PI, HALF_PI - 1e-4, HALF_PI - 2e-4]
    reach = math.ceil((HALF_PI - math.pi / 4) / 1e-4)
    assert reach == 7854
    assert policy.value(reach - 1) > math.pi / 4
    assert policy.value(reach) == math.pi / 4
    assert policy.value(10 * reach) == math.pi / 4
    # Closed form: no accumulated drift compared with repeated subtraction.
    assert policy.value(5000) == HALF_PI - 5000 * 1e-4


def test_fixed_c_and_zero_decay_stay_constant() -> None:
    head = CamSoftmaxHead(D, C, c_policy=FixedC(1.1))
    for _ in range(5):
        head.on_optimizer_step()
    assert float(head.c) == 1.1
    assert int(head.step) == 5
    assert LinearC(decay=0.0).value(10**6) == HALF_PI


def test_cam_head_follows_policy_and_logs_c() -> None:
    policy = LinearC(start=HALF_PI, stop=math.pi / 4, decay=0.05)
    head = CamSoftmaxHead(D, C, c_policy=policy)
    assert head.c.dtype == torch.float64
    assert head.step.dtype == torch.int64
    reach = math.ceil((HALF_PI - math.pi / 4) / 0.05)
    seen = [float(head.log_values()["cam_c"])]
    for _ in range(reach + 3):
        head.on_optimizer_step()
        seen.append(float(head.log_values()["cam_c"]))
    assert seen == [policy.value(k) for k in range(reach + 4)]
    assert seen[reach - 1] > math.pi / 4
    assert seen[reach] == math.pi / 4
    logged = head.log_values()["cam_c"]
    head.on_optimizer_step()
    assert float(logged) == math.pi / 4  # a copy, not the live buffer


def test_cam_head_resume_continues_identical_sequence() -> None:
    torch.manual_seed(0)
    policy = LinearC(start=1.5, stop=1.0, decay=0.013)
    original = CamSoftmaxHead(D, C, c_policy=policy)
    for _ in range(7):
        original.on_optimizer_step()
    restored = CamSoftmaxHead(D, C, c_policy=policy)
    restored.load_state_dict(original.state_dict())
    assert set(original.state_dict()) == {"weight", "c", "step"}
    x, y = torch.randn(B, D), torch.randint(0, C, (B,))
    torch.testing.assert_close(restored(x, y).loss, original(x, y).loss, rtol=0, atol=0)
    sequence_original, sequence_restored = [], []
    for _ in range(50):
        original.on_optimizer_step()
        restored.on_optimizer_step()
        sequence_original.append(original.c.item())
        sequence_restored.append(restored.c.item())
    assert sequence_restored == sequence_original
    assert sequence_restored == [policy.value(k) for k in range(8, 58)]


def test_cam_head_half_pi_equals_normface() -> None:
    torch.manual_seed(0)
    cam = CamSoftmaxHead(D, C, scale=20.0, c_policy=FixedC())
    norm = NormFaceHead(D, C, scale=20.0)
    norm.weight.data.copy_(cam.weight.data)
    x, y = torch.randn(B, D), torch.randint(0, C, (B,))
    torch.testing.assert_close(cam(x, y).loss, norm(x, y).loss)


def test_heads_instantiate_from_hydra_config() -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    head = hydra_utils.instantiate(
        {
            "_target_": "facetrain.losses.CamSoftmaxHead",
            "embedding_size": D,
            "num_classes": C,
            "scale": 20.0,
            "c_policy": {"_target_": "facetrain.losses.LinearC", "start": 1.5, "stop": 0.8, "decay": 0.001},
        }
    )
    assert isinstance(head, CamSoftmaxHead)
    assert head.c_policy == LinearC(1.5, 0.8, 0.001)
    assert float(head.c) == 1.5
    sphere = hydra_utils.instantiate(
        {"_target_": "facetrain.losses.SphereFaceHead", "embedding_size": D, "num_classes": C, "scale": None}
    )
    assert sphere.scale is None
