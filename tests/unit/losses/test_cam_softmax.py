"""Cam-softmax: the activation, its properties, the step policies and the head's c schedule."""

from __future__ import annotations

import math

import pytest
import torch

from facetrain.losses import (
    CamSoftmaxHead,
    FixedC,
    LinearC,
    NormFaceHead,
)
from facetrain.losses import functional as LF
from tests.unit.losses.helpers import (
    HALF_PI,
    cam_reference,
    target_value,
    targets_on_grid,
)


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
    """docs/protocols.md §1.2 table (3 decimals) and the official code's algebraic form (exact)."""
    for cos_value, rounded in table.items():
        value = target_value(lambda cos, y, c=c: LF.cam_softmax_logits(cos, y, c), cos_value)
        assert value == pytest.approx(rounded, abs=6e-4)
        assert value == pytest.approx(cam_reference(cos_value, c), abs=1e-12)


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
def test_bad_c_is_refused_where_it_is_configured(c: float | torch.Tensor) -> None:
    # The forward does not check c (hot path); the policy refuses it when built, and the head refuses a custom
    # policy's initial c, both with the one rule C_RANGE.
    rule = r"is invalid: it must be a number in \(0, pi/2\]"
    with pytest.raises(ValueError, match=r"FixedC\.c=.* " + rule):
        FixedC(c=c)

    class Custom:
        def initial(self) -> float | torch.Tensor:
            return c

        def value(self, step: int, total_steps: int | None = None) -> float | torch.Tensor:
            return c

    with pytest.raises(ValueError, match=r"CamSoftmaxHead\.c_policy\.initial\(\) of .* " + rule):
        CamSoftmaxHead(4, 3, c_policy=Custom())


D, C, B = 16, 10, 12


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


def test_linear_c_over_the_run_known_answers() -> None:
    # T = 200 steps, run_fraction 0.5: stop is reached at step 100, halfway there at step 50.
    policy = LinearC(start=HALF_PI, stop=math.pi / 4, run_fraction=0.5)
    assert policy.uses_run_length and not LinearC().uses_run_length
    assert policy.initial() == HALF_PI == policy.value(0)
    assert policy.value(50, 200) == pytest.approx(3 * math.pi / 8, abs=1e-15)
    assert policy.value(1, 200) == pytest.approx(HALF_PI - (math.pi / 4) / 100, abs=1e-15)
    assert policy.value(99, 200) > math.pi / 4
    assert policy.value(100, 200) == math.pi / 4 == policy.value(200, 200) == policy.value(10**6, 200)
    # decay is unused in this form; the length is required once the run has started.
    assert LinearC(run_fraction=1.0, decay=0.3).value(10, 40) == pytest.approx(HALF_PI - (math.pi / 4) / 4)
    with pytest.raises(ValueError, match="run_fraction=0.5 needs the run's number of optimizer steps"):
        policy.value(1)
    with pytest.raises(ValueError, match=r"LinearC\.run_fraction=1\.5 is invalid: .* a number in \(0, 1\] or null"):
        LinearC(run_fraction=1.5)


def test_cam_head_run_length_schedule_is_fixed_at_fit_start_and_resumes_exactly() -> None:
    policy = LinearC(start=1.5, stop=1.0, run_fraction=0.5)
    head = CamSoftmaxHead(D, C, c_policy=policy)
    with pytest.raises(ValueError, match="loss.c_policy.run_fraction=0.5 needs a finite run length"):
        head.on_fit_start(float("inf"))
    head.on_fit_start(20)  # stop at step 10
    for _ in range(4):
        head.on_optimizer_step()
    assert float(head.c) == pytest.approx(1.5 - 0.5 * 4 / 10, abs=1e-15)
    assert set(head.state_dict()) == {"weight", "c", "step", "total_steps"} and int(head.total_steps) == 20
    # A resumed run whose trainer estimates another length keeps the stored one: the same c sequence.
    restored = CamSoftmaxHead(D, C, c_policy=policy)
    restored.load_state_dict(head.state_dict())
    restored.on_fit_start(1000)
    sequences = [], []
    for _ in range(8):
        for model, seen in zip((head, restored), sequences, strict=True):
            model.on_optimizer_step()
            seen.append(model.c.item())
    assert sequences[0] == sequences[1] == [policy.value(k, 20) for k in range(5, 13)]
    assert sequences[0][-1] == 1.0
    # Step-based policies have no length to store and ignore the hook.
    official = CamSoftmaxHead(D, C)
    official.on_fit_start(float("inf"))
    assert set(official.state_dict()) == {"weight", "c", "step"}


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
