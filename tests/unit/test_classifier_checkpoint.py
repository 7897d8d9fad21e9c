"""Resharding a sharded classifier's checkpoint across process counts (facetrain.classifier.checkpoint), one process.

The optimizer tests train a full (unsharded) classifier and the same classifier split over W ranks side by side, each
rank with its own optimizer over its block, on the same gradients; resharded state must then equal the unsharded one.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from facetrain.classifier import ShardedClassifier
from facetrain.classifier.checkpoint import (
    CLASSIFIER_KEY,
    check_class_count,
    gather_optimizer_states,
    gather_rows,
    load_sharded_classifier,
    on_load_checkpoint,
    on_save_checkpoint,
    reseed_value,
    save_sharded_classifier,
    slice_optimizer_state,
    slice_rows,
)
from facetrain.losses import ArcFaceHead

D = 4


class StandIn(nn.Module):
    """The attributes of ``ShardedClassifier`` that the checkpoint code reads, for rank ``rank`` of ``world``."""

    def __init__(self, num_classes: int, rows_per_class: int = 1, world: int = 1, rank: int = 0, seed: int = 0):
        super().__init__()
        self.num_classes, self.rows_per_class, self.seed = num_classes, rows_per_class, seed
        classes = np.array_split(np.arange(num_classes), world)[rank]
        self.row_start, self.row_stop = int(classes[0]), int(classes[-1]) + 1  # classes, as in ShardedClassifier
        self.weight = nn.Parameter(torch.randn((self.row_stop - self.row_start) * rows_per_class, D))
        self.generator = torch.Generator().manual_seed(seed + rank)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3])
def test_slice_then_gather_round_trips_with_array_split_blocks(world: int, k: int) -> None:
    num_classes = 7
    full = torch.randn(num_classes * k, D)
    blocks = [slice_rows(full, world, rank, k) for rank in range(world)]
    sizes = [len(b) for b in np.array_split(np.arange(num_classes), world)]
    assert [b.shape[0] for b in blocks] == [s * k for s in sizes]
    assert torch.equal(gather_rows(blocks, num_classes, k), full)
    # The K sub-centre rows of a class (rows c·K … c·K+K-1) stay on one rank: blocks start at class boundaries.
    starts = np.cumsum([0, *sizes[:-1]]) * k
    for start, block in zip(starts, blocks, strict=True):
        assert torch.equal(block, full[start : start + block.shape[0]])


def test_gather_rows_refuses_a_block_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match=r"rank 1 of 2 holds 2 rows, expected 3"):
        gather_rows([torch.zeros(4, D), torch.zeros(2, D)], num_classes=7)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        slice_rows(torch.zeros(7, D), 2, 0, rows_per_class=3)


def _train(make_opt, params: list[nn.Parameter], grads: list[list[torch.Tensor]]) -> torch.optim.Optimizer:
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return opt


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("k", [1, 2])
def test_optimizer_state_resharded_2_to_1_and_2_to_3_equals_unsharded(name: str, k: int) -> None:
    make_opt, num_classes = OPTIMIZERS[name], 7
    torch.manual_seed(0)
    # Parameter 0 is a backbone weight (the same on every rank), parameter 1 the classifier: index 1 is resharded.
    backbone0, weight0 = torch.randn(3, D), torch.randn(num_classes * k, D)
    grads = [[torch.randn(3, D), torch.randn(num_classes * k, D)] for _ in range(3)]
    full_params = [nn.Parameter(backbone0.clone()), nn.Parameter(weight0.clone())]
    full_opt = _train(make_opt, full_params, grads)

    shards = []
    for rank in range(2):
        params = [nn.Parameter(backbone0.clone()), nn.Parameter(slice_rows(weight0, 2, rank, k))]
        shard_grads = [[g0, slice_rows(g1, 2, rank, k)] for g0, g1 in grads]
        shards.append((params, _train(make_opt, params, shard_grads)))
    gathered = gather_optimizer_states([opt.state_dict() for _, opt in shards], 1, num_classes, k)
    expected = full_opt.state_dict()
    for index in (0, 1):
        assert gathered["state"][index].keys() == expected["state"][index].keys()
        for key, value in expected["state"][index].items():
            torch.testing.assert_close(gathered["state"][index][key], value, rtol=1e-6, atol=1e-7)
    assert gathered["param_groups"] == expected["param_groups"]
    full_weight = gather_rows([params[1].detach() for params, _ in shards], num_classes, k)

    # One more step after resuming with 1 and with 3 ranks lands where the unsharded run lands.
    next_grads = [torch.randn(3, D), torch.randn(num_classes * k, D)]
    for p, g in zip(full_params, next_grads, strict=True):
        p.grad = g.clone()
    full_opt.step()
    for world in (1, 3):
        for rank in range(world):
            backbone = shards[0][0][0].detach().clone()
            params = [nn.Parameter(backbone), nn.Parameter(slice_rows(full_weight, world, rank, k))]
            opt = make_opt(params)
            # A copy per rank, as each process loads its own from the file (load_state_dict keeps the tensors).
            opt.load_state_dict(slice_optimizer_state(copy.deepcopy(gathered), 1, world, rank, k))
            params[0].grad, params[1].grad = next_grads[0].clone(), slice_rows(next_grads[1], world, rank, k)
            opt.step()
            torch.testing.assert_close(params[1].detach(), slice_rows(full_params[1].detach(), world, rank, k))
            torch.testing.assert_close(params[0].detach(), full_params[0].detach())


def _checkpoint(module: StandIn, opt: torch.optim.Optimizer) -> dict:
    return {
        "state_dict": {"head." + k: copy.deepcopy(v) for k, v in module.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "global_step": 5,
    }


def test_save_then_load_hooks_in_one_process_keep_weights_momentum_and_generator() -> None:
    head = StandIn(5, rows_per_class=2, seed=3)
    opt = _train(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), [head.weight], [[torch.randn_like(head.weight)]])
    head.generator.manual_seed(11)
    ckpt = _checkpoint(head, opt)
    save_sharded_classifier(head, ckpt, "head.", [opt])
    meta = ckpt[CLASSIFIER_KEY]
    assert (meta["num_classes"], meta["rows_per_class"], meta["world_size"]) == (5, 2, 1)
    assert meta["optimizer_params"] == [[0, 0]]

    other = StandIn(5, rows_per_class=2, seed=3)
    load_sharded_classifier(other, ckpt, "head.")
    other.load_state_dict({k.removeprefix("head."): v for k, v in ckpt["state_dict"].items()})
    assert torch.equal(other.weight, head.weight)
    assert torch.equal(other.generator.get_state(), torch.Generator().manual_seed(11).get_state())
    # After one SGD step without weight decay the momentum is the gradient.
    torch.testing.assert_close(ckpt["optimizer_states"][0]["state"][0]["momentum_buffer"], head.weight.grad)


def test_partial_fc_generator_is_reseeded_deterministically_when_the_world_size_changes() -> None:
    head = ShardedClassifier(partial(ArcFaceHead), embedding_size=D, num_classes=5, sample_rate=0.5, seed=3)
    ckpt = _checkpoint(head, torch.optim.SGD([head.weight], lr=0.1))
    saved = [torch.Generator().manual_seed(s).get_state() for s in (100, 101)]
    ckpt[CLASSIFIER_KEY] = {"num_classes": 5, "rows_per_class": 1, "optimizer_params": [], "generator_states": saved}
    ckpt[CLASSIFIER_KEY]["seed"] = 3
    load_sharded_classifier(head, ckpt, "head.")
    # The state_dict entry (ShardedClassifier.get_extra_state, rank 0's in the file) is what Lightning loads next.
    head.load_state_dict({k.removeprefix("head."): v for k, v in ckpt["state_dict"].items()})
    expected = torch.Generator().manual_seed(reseed_value(3, 5, 0, 1)).get_state()
    assert torch.equal(head.generator.get_state(), expected)
    assert len({reseed_value(3, 5, 0, 1), reseed_value(3, 6, 0, 1), reseed_value(3, 6, 1, 2)}) == 3

    # Saved by 1 process, resumed by 1: the stream continues where it was (not re-seeded).
    head.generator.manual_seed(42)
    ckpt = _checkpoint(head, torch.optim.SGD([head.weight], lr=0.1))
    save_sharded_classifier(head, ckpt, "head.")
    head.generator.manual_seed(0)
    load_sharded_classifier(head, ckpt, "head.")
    head.load_state_dict({k.removeprefix("head."): v for k, v in ckpt["state_dict"].items()})
    assert torch.equal(head.generator.get_state(), torch.Generator().manual_seed(42).get_state())


def test_a_checkpoint_with_another_class_count_is_refused_naming_key_and_counts() -> None:
    ckpt = _checkpoint(StandIn(6), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(ValueError, match=r"'head\.weight' has 6 classes but data\.num_classes is 7"):
        load_sharded_classifier(StandIn(7), ckpt, "head.")
    ckpt[CLASSIFIER_KEY] = {"num_classes": 6, "rows_per_class": 1}
    with pytest.raises(ValueError, match=r"'head\.weight' has 6 classes but data\.num_classes is 9"):
        check_class_count(ckpt, "head.weight", 9)


def test_module_hooks_refuse_another_class_count_for_a_replicated_head_too() -> None:
    head = ArcFaceHead(embedding_size=D, num_classes=6)
    ckpt = {"state_dict": {"head.weight": torch.zeros(6, D)}}
    on_save_checkpoint(head, ckpt, "head.", [])  # a head holding every class: the checkpoint is left as it is
    assert CLASSIFIER_KEY not in ckpt
    on_load_checkpoint(head, ckpt, "head.")
    with pytest.raises(ValueError, match=r"'head\.weight' has 6 classes but data\.num_classes is 5"):
        on_load_checkpoint(ArcFaceHead(embedding_size=D, num_classes=5), ckpt, "head.")
    # A sharded checkpoint holds the full matrix, so a replicated head resumes from it.
    sharded = ShardedClassifier(partial(ArcFaceHead), embedding_size=D, num_classes=6)
    ckpt = {"state_dict": {"head." + k: v for k, v in sharded.state_dict().items()}, "optimizer_states": []}
    on_save_checkpoint(sharded, ckpt, "head.", [])
    assert ckpt[CLASSIFIER_KEY]["num_classes"] == 6
    on_load_checkpoint(head, ckpt, "head.")
    head.load_state_dict({"weight": ckpt["state_dict"]["head.weight"]})
    assert torch.equal(head.weight, sharded.weight)
