"""Every margin form and head of the original five: only targets change, full-matrix references, gradients, the head
interface, constructors and Hydra configs."""

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
from tests.unit.losses.helpers import (
    HALF_PI,
    MarginFn,
    psi_reference,
)

ALL_FORMS: dict[str, MarginFn] = {
    "normface": LF.normface_logits,
    "cosface": lambda cos, y: LF.cosface_logits(cos, y, 0.35),
    "arcface": lambda cos, y: LF.arcface_logits(cos, y, 0.5),
    "arcface_easy": lambda cos, y: LF.arcface_logits(cos, y, 0.5, easy_margin=True),
    "sphereface": lambda cos, y: LF.sphereface_logits(cos, y, 4, 0.0),
    "sphereface_lambda": lambda cos, y: LF.sphereface_logits(cos, y, 3, 5.0),
    "cam": lambda cos, y: LF.cam_softmax_logits(cos, y, math.pi / 3),
}


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
        (lambda: ArcFaceHead(D, C, margin=-0.1), r"ArcFaceHead\.margin=-0\.1 is invalid: .* a number in \[0, pi\)"),
        (lambda: ArcFaceHead(D, C, margin=4.0), r"ArcFaceHead\.margin=4\.0 is invalid: .* a number in \[0, pi\)"),
        (lambda: CosFaceHead(D, C, margin=-0.35), r"CosFaceHead\.margin=-0\.35 is invalid: it must be a number >= 0"),
        (lambda: CosFaceHead(D, C, scale=0.0), r"CosFaceHead\.scale=0\.0 is invalid: it must be a number > 0$"),
        (lambda: NormFaceHead(D, C, scale=-20.0), r"NormFaceHead\.scale=-20\.0 is invalid: it must be a number > 0"),
        (lambda: NormFaceHead(D, C, scale=math.nan), r"NormFaceHead\.scale=nan is invalid: it must be a number > 0"),
        (lambda: NormFaceHead(D, C, scale=None), r"NormFaceHead\.scale=None is invalid: it must be a number > 0$"),
        (lambda: ArcFaceHead(D, 1), r"ArcFaceHead\.num_classes=1 is invalid: it must be an integer >= 2"),
        (lambda: ArcFaceHead(0, C), r"ArcFaceHead\.embedding_size=0 is invalid: it must be an integer >= 1"),
        (lambda: SoftmaxHead(D, 1), r"SoftmaxHead\.num_classes=1 is invalid: it must be an integer >= 2"),
        (lambda: SphereFaceHead(D, C, m=0), r"SphereFaceHead\.m=0 is invalid: it must be an integer >= 1"),
        (lambda: SphereFaceHead(D, C, m=1.35), r"SphereFaceHead\.m=1\.35 is invalid: it must be an integer >= 1"),
        (lambda: SphereFaceHead(D, C, scale=0.0), r"SphereFaceHead\.scale=0\.0 is invalid: .* a number > 0 or null"),
        (lambda: SphereFaceHead(D, C, lambda_min=-1.0), r"SphereFaceHead\.lambda_min=-1\.0 is invalid: .* >= 0"),
        (lambda: CamSoftmaxHead(D, C, scale=-1.0), r"CamSoftmaxHead\.scale=-1\.0 is invalid: it must be a number > 0"),
        (lambda: CamSoftmaxHead(D, C, c_policy=object()), "c_policy must have initial"),  # type: ignore[arg-type]
        (lambda: LinearC(start=1.0, stop=1.2), r"LinearC: stop=1\.2 must be <= start=1\.0"),
        (lambda: LinearC(start=1.6), r"LinearC\.start=1\.6 is invalid: it must be a number in \(0, pi/2\]"),
        (lambda: LinearC(stop=0.0), r"LinearC\.stop=0\.0 is invalid: it must be a number in \(0, pi/2\]"),
        (lambda: LinearC(decay=-1e-4), r"LinearC\.decay=-0\.0001 is invalid: it must be a number >= 0"),
        (lambda: FixedC(c=2.0), r"FixedC\.c=2\.0 is invalid: it must be a number in \(0, pi/2\]"),
    ],
)
def test_constructors_reject_bad_arguments(factory: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


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
