"""facetrain.training.nonfinite: the device flag and the deferred event record (known answers)."""

from __future__ import annotations

import math

import pytest
import torch

from facetrain.training.nonfinite import NonfiniteEvents, nonfinite_flag, skips_on_device


@pytest.mark.parametrize(
    ("loss", "bad", "expected"),
    [(1.5, None, 0.0), (math.nan, None, 1.0), (math.inf, None, 1.0), (2.0, math.nan, 1.0), (2.0, -math.inf, 1.0)],
)
def test_flag_marks_a_non_finite_loss_or_gradient_and_leaves_gradients_unchanged(
    loss: float, bad: float | None, expected: float
) -> None:
    grads = [torch.randn(3, 4), torch.randn(7, dtype=torch.float64), torch.randn(2, 2).bfloat16()]
    if bad is not None:
        grads[1][5] = bad
    before = [g.clone() for g in grads]
    flag = nonfinite_flag(torch.tensor(loss), grads)
    assert flag.dtype == torch.float32 and flag.shape == () and float(flag) == expected
    for a, b in zip(before, grads):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)


def test_events_come_back_in_order_with_their_step_and_kind_in_one_read() -> None:
    events = NonfiniteEvents()
    events.record(torch.tensor(0.0), torch.tensor(1.0), 10, 0, 10)
    events.record(torch.tensor(1.0), torch.tensor(math.nan), 11, 0, 11)
    events.record(torch.tensor(1.0), torch.tensor(2.0), 12, 1, 0)
    drained = events.drain()
    assert [(e.what, e.global_step, e.epoch, e.batch_idx) for e in drained] == [
        ("training loss nan", 11, 0, 11),
        ("gradient", 12, 1, 0),
    ]
    assert len(events) == 0 and events.drain() == []


def test_only_fused_optimizers_skip_on_the_device() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert skips_on_device(torch.optim.SGD(params, lr=0.1, fused=True))
    assert skips_on_device(torch.optim.AdamW(params, lr=0.1, fused=True))
    assert not skips_on_device(torch.optim.SGD(params, lr=0.1))
    assert not skips_on_device(torch.optim.SGD(params, lr=0.1, foreach=True))
