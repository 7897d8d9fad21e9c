"""Cam-softmax c policies: the adaptive rule and the loss/c_policy config group."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facetrain.losses import (
    AdaptiveC,
    CamSoftmaxHead,
    FixedC,
    LinearC,
)
from facetrain.utils.instantiate import instantiate
from tests.unit.losses.helpers import (
    B,
    C,
    D,
)


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
    head.on_fit_start(100)  # what the training module does; the default linear policy runs over the run's length
    head.on_optimizer_step()


def test_default_c_policy_runs_over_the_run_and_the_official_preset_keeps_the_per_step_one(compose_cfg) -> None:
    head = instantiate(compose_cfg("loss=cam_softmax").loss)(embedding_size=D, num_classes=C)
    assert head.c_policy == LinearC(run_fraction=0.5)
    official = instantiate(compose_cfg("experiment=camsoftmax_official").loss)(embedding_size=D, num_classes=C)
    assert official.c_policy == LinearC()
