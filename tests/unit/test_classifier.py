"""Sharded classifier, single process: block layout, one shard == replicated head for every head, Partial FC."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch

from facetrain import losses
from facetrain.classifier import ShardedClassifier, block_range, init_rows, sharded_cross_entropy
from facetrain.classifier import sharded as sharded_module
from facetrain.classifier.sampling import num_sampled, sample_classes

HEADS = {
    "normface": losses.NormFaceHead,
    "sphereface": losses.SphereFaceHead,
    "cosface": losses.CosFaceHead,
    "arcface": losses.ArcFaceHead,
    "cam_softmax": functools.partial(losses.CamSoftmaxHead, c_policy=losses.AdaptiveC(start=1.3, max_step=0.01)),
    "combined": losses.CombinedMarginHead,
    "curricularface": functools.partial(losses.CurricularFaceHead, t_init=0.2, momentum=0.2),
    "adaface": functools.partial(losses.AdaFaceHead, t_alpha=0.2),
    "magface": losses.MagFaceHead,
    "subcenter_arcface": losses.SubCenterArcFaceHead,
}
C, D, B = 11, 8, 12


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("rows", "world", "expected"),
    [
        (10, 3, [(0, 4), (4, 7), (7, 10)]),
        (2, 3, [(0, 1), (1, 2), (2, 2)]),
        (9, 3, [(0, 3), (3, 6), (6, 9)]),
        (5, 1, [(0, 5)]),
    ],
)
def test_block_range_known_answers(rows: int, world: int, expected: list[tuple[int, int]]) -> None:
    assert [block_range(rows, world, r) for r in range(world)] == expected


def test_block_range_matches_numpy_array_split() -> None:
    for rows in range(0, 30):
        for world in range(1, 7):
            sizes = [len(part) for part in np.array_split(np.arange(rows), world)]
            got = [block_range(rows, world, r) for r in range(world)]
            assert [b - a for a, b in got] == sizes
            assert got[0][0] == 0 and got[-1][1] == rows
            assert all(got[i][1] == got[i + 1][0] for i in range(world - 1))


@pytest.mark.parametrize(("args", "match"), [((5, 0, 0), "world_size"), ((5, 2, 2), "rank"), ((-1, 2, 0), "rows")])
def test_block_range_bad_input(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        block_range(*args)


def test_init_rows_do_not_depend_on_the_split() -> None:
    full = init_rows(0, 9000, 3, seed=4)
    parts = [init_rows(*block_range(9000, 3, r), 3, seed=4) for r in range(3)]
    assert torch.equal(torch.cat(parts), full)
    assert not torch.equal(init_rows(0, 10, 3, seed=5), full[:10])


def test_sharded_cross_entropy_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 7, generator=g) * 30).requires_grad_(True)
    labels = torch.tensor([0, 3, 6, 3, 1])
    target = logits.gather(1, labels[:, None]).squeeze(1)
    excluded = torch.zeros(5, 7, dtype=torch.bool).scatter_(1, labels[:, None], True)
    loss = sharded_cross_entropy(target, logits, excluded)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert rel(loss, expected) < 1e-6
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    assert rel(grad, grad_expected) < 1e-6


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g) * 8, torch.randint(0, C, (B,), generator=g)


def _reference(factory: functools.partial, k: int, seed: int = 0) -> torch.nn.Module:
    head = factory(embedding_size=D, num_classes=C)
    head.weight.data.copy_(init_rows(0, C * k, D, seed))
    return head


@pytest.mark.parametrize("name", list(HEADS))
def test_single_shard_equals_replicated_head(name: str) -> None:
    sharded = ShardedClassifier(HEADS[name], D, C, sample_rate=1.0, seed=0)
    reference = _reference(HEADS[name], sharded.rows_per_class)
    x, y = _batch()
    x_ref, x_sh = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out = reference(x_ref, y), sharded(x_sh, y)
    out_ref.loss.backward()
    out.loss.backward()
    assert rel(out.loss, out_ref.loss) < 1e-6
    assert rel(x_sh.grad, x_ref.grad) < 1e-5
    assert rel(sharded.weight.grad, reference.weight.grad) < 1e-5
    for key, buffer in reference.named_buffers():  # batch statistics updated from the same (global) batch
        assert rel(sharded.head.get_buffer(key), buffer) < 1e-6, key
    cos_target, cos_nearest = sharded.target_and_nearest()
    masked = out_ref.cosine.detach().scatter(1, y[:, None], -2.0)
    assert torch.allclose(cos_target, out_ref.cosine.gather(1, y[:, None]).squeeze(1).clamp(-1, 1), atol=1e-6)
    assert torch.allclose(cos_nearest, masked.amax(dim=1), atol=1e-6)


def test_subcenter_rows_per_class_and_layout() -> None:
    sharded = ShardedClassifier(functools.partial(losses.SubCenterArcFaceHead, k=3), D, C, seed=0)
    assert sharded.rows_per_class == 3
    assert sharded.weight.shape == (3 * C, D)
    assert (sharded.row_start, sharded.row_stop, sharded.num_classes) == (0, C, C)


def test_single_process_says_so(caplog: pytest.LogCaptureFixture) -> None:
    sharded = ShardedClassifier(losses.ArcFaceHead, D, C)
    with caplog.at_level(logging.INFO, logger="facetrain.classifier.sharded"):
        sharded.configure_shards()
    assert "one shard holds all 11 classes" in caplog.text


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan")])
def test_sample_rate_outside_unit_interval_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match=r"classifier\.sample_rate"):
        ShardedClassifier(losses.ArcFaceHead, D, C, sample_rate=rate)


def test_softmax_head_is_refused_naming_classifier_and_loss() -> None:
    with pytest.raises(ValueError, match=r"classifier: loss=SoftmaxHead cannot be sharded"):
        ShardedClassifier(losses.SoftmaxHead, D, C)


def test_fewer_classes_than_ranks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sharded = ShardedClassifier(losses.ArcFaceHead, D, 2)
    monkeypatch.setattr(sharded_module, "world_and_rank", lambda: (3, 0))
    with pytest.raises(ValueError, match=r"num_classes=2 is fewer than the 3 processes"):
        sharded.configure_shards()


# ------------------------------------------------------------------------------------------------------------------
# Partial FC
# ------------------------------------------------------------------------------------------------------------------


def test_sampling_keeps_every_positive_and_the_count_rule() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        positive = torch.rand(40, generator=g) < 0.1 * (trial % 5)
        kept = sample_classes(positive, num_sampled(0.25, 40), g)
        assert set(torch.nonzero(positive).squeeze(1).tolist()) <= set(kept.tolist())
        assert len(kept) == max(10, int(positive.sum())) and len(set(kept.tolist())) == len(kept)
        assert torch.equal(kept, kept.sort().values)
    assert num_sampled(0.1, 99) == 9  # arcface_torch truncates


def test_sampled_negatives_are_uniform_over_the_block() -> None:
    """Chi-square test of the negative counts (fixed seed; df = 17, the 0.1 % critical value is 40.8)."""
    g = torch.Generator().manual_seed(123)
    positive = torch.zeros(20, dtype=torch.bool)
    positive[[0, 7]] = True
    counts = torch.zeros(20)
    draws = 3000
    for _ in range(draws):
        counts[sample_classes(positive, 6, g)] += 1
    assert counts[0] == counts[7] == draws
    negatives = counts[~positive]
    expected = draws * 4 / 18
    chi2 = float(((negatives - expected) ** 2 / expected).sum())
    assert chi2 < 40.8, chi2


@pytest.mark.parametrize("name", ["arcface", "curricularface", "adaface", "magface", "subcenter_arcface"])
def test_partial_fc_loss_equals_reference_on_the_sampled_classes(name: str) -> None:
    factory = HEADS[name]
    sharded = ShardedClassifier(factory, D, C, sample_rate=0.3, seed=2)
    k = sharded.rows_per_class
    x, y = _batch(1)
    generator = torch.Generator()
    generator.set_state(sharded.generator.get_state())
    positive = torch.zeros(C, dtype=torch.bool)
    positive[y] = True
    classes = sample_classes(positive, num_sampled(0.3, C), generator).tolist()
    assert len(classes) < C  # the test needs classes that are left out
    reference = factory(embedding_size=D, num_classes=len(classes))
    reference.weight.data.copy_(init_rows(0, C * k, D, seed=2).reshape(C, k, D)[classes].reshape(-1, D))
    remap = {c: i for i, c in enumerate(classes)}
    x_ref, x_sh = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref = reference(x_ref, torch.tensor([remap[int(c)] for c in y]))
    out = sharded(x_sh, y)
    out_ref.loss.backward()
    out.loss.backward()
    assert rel(out.loss, out_ref.loss) < 1e-6
    assert rel(x_sh.grad, x_ref.grad) < 1e-5
    assert sharded.weight.grad is None  # the block itself gets no gradient: only the sampled rows do
    rows, active = sharded.sampled
    expected_rows = (torch.tensor(classes)[:, None] * k + torch.arange(k)).reshape(-1)
    assert torch.equal(rows, expected_rows)
    assert rel(active.grad, reference.weight.grad) < 1e-5


def test_partial_fc_generator_state_is_saved_and_restored() -> None:
    a = ShardedClassifier(losses.ArcFaceHead, D, C, sample_rate=0.3, seed=9)
    x, y = _batch(2)
    a(x, y)
    state = a.state_dict()
    b = ShardedClassifier(losses.ArcFaceHead, D, C, sample_rate=0.3, seed=1)
    b.load_state_dict(state)
    for step in range(3):
        x, y = _batch(10 + step)
        assert torch.equal(a(x, y).cosine, b(x, y).cosine)


def _sgd_group(**overrides: float) -> dict:
    return {"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4, "nesterov": False, **overrides}


@pytest.mark.parametrize("overrides", [{}, {"nesterov": True}, {"momentum": 0.0}, {"weight_decay": 0.0}])
def test_sgd_rows_equals_torch_sgd_on_those_rows(overrides: dict) -> None:
    from facetrain.classifier.row_update import sgd_rows

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(9, 4, generator=g)
    buffer = torch.zeros(9, 4)
    rows = torch.tensor([1, 4, 6])
    reference = torch.nn.Parameter(weight[rows].clone())
    opt = torch.optim.SGD([reference], **_sgd_group(**overrides))
    untouched = weight[[0, 2, 3, 5, 7, 8]].clone()
    for _ in range(3):
        grad = torch.randn(3, 4, generator=g)
        reference.grad = grad.clone()
        opt.step()
        sgd_rows(weight, buffer, rows, grad, _sgd_group(**overrides))
    assert torch.allclose(weight[rows], reference.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(weight[[0, 2, 3, 5, 7, 8]], untouched)
    assert float(buffer[[0, 2, 3, 5, 7, 8]].abs().max()) == 0.0


def test_sgd_rows_skips_on_a_found_inf_flag_or_a_non_finite_gradient() -> None:
    from facetrain.classifier.row_update import sgd_rows

    weight, buffer = torch.ones(4, 2), torch.zeros(4, 2)
    rows = torch.tensor([0, 2])
    sgd_rows(weight, buffer, rows, torch.ones(2, 2), _sgd_group(), found_inf=torch.tensor(1.0))
    sgd_rows(weight, buffer, rows, torch.full((2, 2), float("nan")), _sgd_group())
    assert torch.equal(weight, torch.ones(4, 2)) and torch.equal(buffer, torch.zeros(4, 2))


def test_partial_fc_step_leaves_unsampled_rows_and_their_momentum_alone() -> None:
    sharded = ShardedClassifier(losses.ArcFaceHead, D, 40, sample_rate=0.2, seed=0)
    opt = torch.optim.SGD(sharded.parameters(), **_sgd_group())
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(B, D, generator=g), torch.randint(0, 40, (B,), generator=g)
        before, momentum_before = sharded.weight.detach().clone(), sharded.weight_momentum.clone()
        opt.zero_grad()
        sharded(x, y).loss.backward()
        rows = sharded.sampled[0]
        opt.step()
        sharded.step_rows(opt)
        others = torch.ones(40, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(sharded.weight.detach()[others], before[others])
        assert torch.equal(sharded.weight_momentum[others], momentum_before[others])
        assert not torch.equal(sharded.weight.detach()[rows], before[rows])
        assert float(sharded.weight_momentum[rows].abs().min()) > 0
    assert opt.state.get(sharded.weight, {}).get("momentum_buffer") is None  # the optimizer never touched the block


def test_partial_fc_accumulated_micro_batches_sum_their_row_gradients() -> None:
    """Two forwards before one step (gradient accumulation): the rows of both get the summed gradient, once."""
    sharded = ShardedClassifier(losses.ArcFaceHead, D, 40, sample_rate=0.2, seed=0)
    dense = sharded.weight.detach().clone().requires_grad_(True)
    group = _sgd_group()
    for seed in (0, 1):
        x, y = _batch(seed)
        sharded(x, y).loss.backward()
    expected = torch.zeros_like(dense)
    for rows, active in sharded._pending:
        expected.index_add_(0, rows, active.grad)
    reference = torch.optim.SGD([dense], **group)
    dense.grad = expected
    reference.step()
    touched = expected.abs().sum(dim=1) > 0
    sharded.step_rows(torch.optim.SGD(sharded.parameters(), **group))
    assert sharded._pending == []
    assert torch.allclose(sharded.weight.detach()[touched], dense.detach()[touched], rtol=1e-6, atol=1e-8)
    momentum = reference.state[dense]["momentum_buffer"]
    assert torch.allclose(sharded.weight_momentum[touched], momentum[touched], rtol=1e-6, atol=1e-8)
    assert float(sharded.weight_momentum[~touched].abs().max()) == 0.0


def test_partial_fc_skipped_step_drops_its_rows() -> None:
    sharded = ShardedClassifier(losses.ArcFaceHead, D, 40, sample_rate=0.2, seed=0)
    opt = torch.optim.SGD(sharded.parameters(), **_sgd_group())
    before = sharded.weight.detach().clone()
    x, y = _batch(0)
    sharded(x, y).loss.backward()
    sharded.step_rows(opt, found_inf=torch.tensor(1.0))  # the non-finite guard skipped this step
    assert sharded._pending == [] and torch.equal(sharded.weight.detach(), before)
    assert float(sharded.weight_momentum.abs().max()) == 0.0


def test_partial_fc_refuses_an_optimizer_it_cannot_reproduce() -> None:
    from facetrain.utils.rules import ConfigError

    sharded = ShardedClassifier(losses.ArcFaceHead, D, 40, sample_rate=0.2)
    opt = torch.optim.AdamW(sharded.parameters())
    x, y = _batch()
    sharded(x, y % 40).loss.backward()
    with pytest.raises(ConfigError, match=r"classifier\.sample_rate < 1 .*optimizer=sgd"):
        sharded.step_rows(opt)
