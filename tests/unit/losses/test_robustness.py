"""Every head and the newer margin forms: only targets change, finite at cos = +-1 and under autocast, side-effect-free
probes, buffers and argument checks."""

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
    MagFaceHead,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    SubCenterArcFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    B,
    C,
    D,
    MarginFn,
    random_cos,
)

TARGET_ONLY_FORMS: dict[str, MarginFn] = {
    "combined": lambda cos, y: LF.combined_logits(cos, y),
    "combined_m1": lambda cos, y: LF.combined_logits(cos, y, 1.5, 0.2, 0.1),
    "adaface": lambda cos, y: LF.adaface_logits(cos, y, torch.linspace(-1, 1, cos.shape[0])),
    "magface": lambda cos, y: LF.magface_logits(cos, y, torch.linspace(5, 120, cos.shape[0])),
}


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
        (lambda: LF.magface_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(3)), "norms"),
        (lambda: LF.subcenter_max(torch.zeros(2, 5), 2), "k"),
        (lambda: LF.combined_logits(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), "labels"),
    ],
)
def test_bad_arguments_are_rejected_with_their_name(factory: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
