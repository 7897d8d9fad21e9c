"""The classifier/ config group and its wiring into the training module (single process)."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from facetrain.classifier import ShardedClassifier, check_classifier_head
from facetrain.losses import ArcFaceHead
from facetrain.models.module import FaceRecognitionModule
from facetrain.tasks.train import train
from facetrain.utils.rules import ConfigError
from facetrain.utils.schema import validate_config
from tests.conftest import CONFIGS, bare_cpu_trainer

EMBED, CLASSES = 8, 40


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIGS / "classifier").glob("*.yaml")))
def test_every_classifier_option_builds_a_working_head(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"classifier={option}", "loss=arcface")
    validate_config(cfg)
    check_classifier_head(cfg.classifier, cfg.loss, cfg.optimizer)
    head = instantiate(cfg.classifier)(head=instantiate(cfg.loss), embedding_size=16, num_classes=5)
    emb = torch.randn(4, 16, requires_grad=True)
    head(emb, torch.tensor([0, 1, 2, 3])).loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert cfg.model.classifier == cfg.classifier


def test_replicated_is_the_default_and_builds_the_head_itself(compose_cfg) -> None:
    cfg = compose_cfg("loss=arcface")
    head = instantiate(cfg.classifier)(head=instantiate(cfg.loss), embedding_size=16, num_classes=5)
    assert type(head) is ArcFaceHead and head.weight.shape == (5, 16)


@pytest.mark.parametrize("rate", ["0", "1.5", "-0.1"])
def test_sample_rate_outside_the_unit_interval_is_refused_before_any_data(compose_cfg, rate: str) -> None:
    cfg = compose_cfg("classifier=partial_fc", f"classifier.sample_rate={rate}")
    with pytest.raises(ConfigError, match=rf"classifier\.sample_rate={rate}\b.* is invalid"):
        train(cfg)


@pytest.mark.parametrize("option", ["model_parallel", "partial_fc"])
def test_plain_softmax_cannot_be_sharded_and_is_refused_before_any_data(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"classifier={option}", "loss=softmax")
    with pytest.raises(ConfigError, match=r"classifier.*loss=SoftmaxHead cannot be sharded.*classifier=replicated"):
        train(cfg)


def test_partial_fc_with_an_optimizer_it_cannot_reproduce_is_refused_before_any_data(compose_cfg) -> None:
    cfg = compose_cfg("classifier=partial_fc", "loss=arcface", "optimizer=adamw")
    with pytest.raises(ConfigError, match=r"classifier\.sample_rate=0\.1 \(Partial FC\).*optimizer=AdamW"):
        train(cfg)
    check_classifier_head(cfg.classifier, cfg.loss, compose_cfg("optimizer=sgd").optimizer)  # SGD is fine


def test_partial_fc_at_sample_rate_one_is_model_parallel(compose_cfg) -> None:
    built = []
    for overrides in (["classifier=model_parallel"], ["classifier=partial_fc", "classifier.sample_rate=1.0"]):
        cfg = compose_cfg(*overrides, "loss=cam_softmax")
        head = instantiate(cfg.classifier)(head=instantiate(cfg.loss), embedding_size=16, num_classes=7)
        emb = torch.randn(6, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
        head(emb, torch.tensor([0, 1, 2, 3, 4, 6])).loss.backward()
        built.append((head, emb.grad))
    (mp, mp_grad), (pfc, pfc_grad) = built
    assert torch.equal(mp.weight, pfc.weight) and torch.equal(mp_grad, pfc_grad)
    assert torch.equal(mp.weight.grad, pfc.weight.grad)
    assert torch.equal(mp.generator.get_state(), pfc.generator.get_state())  # nothing was drawn


class Linear(nn.Linear):
    embedding_size = EMBED


def _module(classifier: functools.partial | None, fused: bool = False) -> FaceRecognitionModule:
    torch.manual_seed(0)
    return FaceRecognitionModule(
        backbone=Linear(EMBED, EMBED),
        head=functools.partial(ArcFaceHead, scale=16.0),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, fused=fused),
        num_classes=CLASSES,
        classifier=classifier,
    )


def _fit(module: FaceRecognitionModule, steps: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, EMBED, generator=gen), torch.randint(0, CLASSES, (64,), generator=gen))
    trainer = bare_cpu_trainer(max_steps=steps, log_every_n_steps=1)
    trainer.fit(module, DataLoader(data, batch_size=8))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_model_parallel_module_trains_like_the_replicated_one(caplog: pytest.LogCaptureFixture) -> None:
    replicated = _module(None)
    sharded = _module(functools.partial(ShardedClassifier, sample_rate=1.0))
    sharded.head.weight.data.copy_(replicated.head.weight.data)
    expected = _fit(replicated, 3)
    with caplog.at_level(logging.INFO, logger="facetrain.classifier.sharded"):
        logged = _fit(sharded, 3)
    assert "no distributed trainer (world size 1): one shard holds all 40 classes" in caplog.text
    # Loss, accuracy and the angle statistics come from the sharded classifier's own target / nearest cosines.
    for key in ["train/loss", "train/acc", "train/theta_target", "train/theta_nearest", "train/theta_nearest_std"]:
        assert logged[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key
    for mine, theirs in [(sharded.backbone, replicated.backbone), (sharded.head, replicated.head)]:
        assert float((mine.weight - theirs.weight).norm() / theirs.weight.norm()) < 1e-5


@pytest.mark.parametrize("fused", [False, True], ids=["host-check", "device-skip"])
def test_partial_fc_module_updates_only_the_sampled_rows(fused: bool) -> None:
    module = _module(functools.partial(ShardedClassifier, sample_rate=0.1), fused=fused)
    initial = module.head.weight.detach().clone()
    _fit(module, 4)
    moved = module.head.weight_momentum.abs().sum(dim=1) > 0
    assert 0 < int(moved.sum()) < CLASSES  # some rows were sampled, some never were
    # Never sampled: value exactly as initialised (no weight decay, no momentum); sampled: updated.
    assert torch.equal(module.head.weight.detach()[~moved], initial[~moved])
    assert not torch.equal(module.head.weight.detach()[moved], initial[moved])
    optimizer = module.trainer.optimizers[0]
    assert optimizer.state.get(module.head.weight, {}).get("momentum_buffer") is None
    metrics = module.trainer.callback_metrics
    assert 0.0 <= float(metrics["train/acc"]) <= 1.0 and 0.0 <= float(metrics["train/theta_nearest"]) <= 180.0
