"""Every option of every config group composes and builds; unknown options fail with Hydra's list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import get_object
from omegaconf import OmegaConf

from facetrain.tasks.train import check_optimized_metric
from facetrain.utils.instantiate import instantiate, instantiate_named
from tests.conftest import CONFIGS


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_required_groups_exist() -> None:
    for group in ["backbone", "loss", "data", "eval", "trainer", "logger", "callbacks", "experiment"]:
        assert _options(group), f"configs/{group}/ has no options"


@pytest.mark.parametrize("loss", _options("loss"))
def test_every_loss_builds_a_head(compose_cfg, loss: str) -> None:
    cfg = compose_cfg(f"loss={loss}")
    head = instantiate(cfg.loss)(embedding_size=16, num_classes=5)
    emb, labels = torch.randn(4, 16, requires_grad=True), torch.tensor([0, 1, 2, 3])
    out = head(emb, labels)
    out.loss.backward()
    assert out.logits.shape == (4, 5)
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("backbone", [b for b in _options("backbone") if b != "timm"])
def test_every_backbone_builds(compose_cfg, backbone: str) -> None:
    cfg = compose_cfg(f"backbone={backbone}", "backbone.embedding_size=32")
    model = instantiate(cfg.backbone).eval()
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 32)


def test_any_timm_name_through_backbone_timm(compose_cfg) -> None:
    cfg = compose_cfg("backbone=timm", "backbone.model_name=efficientnet_b0", "backbone.embedding_size=8")
    assert instantiate(cfg.backbone).eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 8)


@pytest.mark.parametrize("option", _options("trainer"))
def test_every_trainer_composes(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"trainer={option}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if option in ("default", "cpu"):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", _options("logger"))
def test_every_logger_builds(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"logger={option}")
    for logger in instantiate_named(cfg.logger):
        assert Path(logger.save_dir).is_relative_to(Path(cfg.paths.output_dir))


def _stored(obj: object, key: str) -> tuple[bool, object]:
    """``obj``'s value for constructor argument ``key`` where it keeps it under that name or ``_<key>``."""
    for name in (key, f"_{key}"):
        if name in vars(obj):
            return True, vars(obj)[name]
    return False, None


@pytest.mark.parametrize("option", _options("callbacks"))
def test_every_callbacks_option_builds(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"callbacks={option}")
    nodes = OmegaConf.to_container(cfg.callbacks, resolve=True, throw_on_missing=True) or {}
    built = instantiate_named(cfg.callbacks)
    if option == "none":
        assert built == []
    elif option != "default":
        assert list(nodes) == [option]  # callbacks/<name>.yaml defines callbacks.<name> (what overrides address)
    assert len(built) == len(nodes)
    output_dir = Path(cfg.paths.output_dir).resolve()
    for (name, node), callback in zip(nodes.items(), built, strict=True):
        assert type(callback) is get_object(node["_target_"]), name
        for key, value in node.items():
            found, stored = _stored(callback, key)
            if key == "dirpath":  # every file a callback writes goes into this run's directory
                assert found and Path(stored).resolve().is_relative_to(output_dir), (name, stored)
            elif found and not key.startswith("_"):
                assert stored == value, f"callbacks.{name}.{key}: built {stored!r}, configured {value!r}"


@pytest.mark.parametrize("option", ["sgd", "adamw"])
def test_optimizers_and_schedulers(compose_cfg, option: str) -> None:
    for scheduler in _options("scheduler"):
        cfg = compose_cfg(f"optimizer={option}", f"scheduler={scheduler}")
        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        sched = instantiate(cfg.scheduler)(opt, total_steps=100)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert max(lrs) == pytest.approx(cfg.optimizer.lr)


def _leaves(node: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a plain nested dict (lists are leaves)."""
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments_compose(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"experiment={option}")
    # Every interpolation resolves (a misspelt ${paths.x} or a missing ??? fails here, not hours into a run); real
    # data paths only resolve to paths under paths.data_dir, nothing is read.
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert Path(resolved["paths"]["output_dir"]) == Path(cfg.paths.output_dir)
    # What the experiment file itself sets is what the run gets (it is applied last, after the group defaults).
    own = OmegaConf.to_container(OmegaConf.load(CONFIGS / "experiment" / f"{option}.yaml"), resolve=False)
    own.pop("defaults", None)
    composed = _leaves(OmegaConf.to_container(cfg, resolve=False))  # unresolved, as the file writes them
    for key, value in _leaves(own).items():
        assert composed.get(key) == value, f"experiment={option}: {key}"
    # The module is built from the composed head and backbone (model.head: ${loss}, model.backbone: ${backbone}).
    assert resolved["model"]["head"] == resolved["loss"] and resolved["model"]["backbone"] == resolved["backbone"]


def test_unknown_option_lists_valid_ones(compose_cfg) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose_cfg("loss=arcfaec")
    message = str(info.value)
    assert "arcfaec" in message
    for valid in _options("loss"):
        assert valid in message


def test_misspelled_key_is_refused(compose_cfg) -> None:
    with pytest.raises(Exception, match="margn"):
        compose_cfg("loss.margn=0.3")


def test_optimized_metric_of_a_set_the_run_does_not_evaluate_is_refused(compose_cfg) -> None:
    cfg = compose_cfg("experiment=smoke", "eval=[ytf]")  # the default optimized_metric is lfw/acc
    with pytest.raises(ValueError, match=r"optimized_metric='lfw/acc' names the set 'lfw'.*eval=\['ytf'\].*ytf/"):
        check_optimized_metric(cfg.get("optimized_metric"), cfg.get("eval"))
    for fine in ("optimized_metric=ytf/acc", "optimized_metric=train/loss", "optimized_metric=null"):
        other = compose_cfg("experiment=smoke", "eval=[ytf]", fine)
        check_optimized_metric(other.get("optimized_metric"), other.get("eval"))
