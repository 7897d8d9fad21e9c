"""Config validation (facetrain.utils.schema): every option composes clean; bad keys and values name the key."""

from __future__ import annotations

import math

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from facetrain.utils.schema import ConfigError, Interval, OneOf, check_value, validate_config
from tests.conftest import CONFIGS


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _outside(constraint: Interval | OneOf) -> list[object]:
    """Values just outside a constraint (each must be refused)."""
    if isinstance(constraint, OneOf):
        return ["not-a-choice"]
    bad: list[object] = ["text"]
    if not constraint.allow_none:
        bad.append(None)
    if math.isfinite(constraint.low):
        bad.append(constraint.low if constraint.low_open else constraint.low - 0.5)
    if math.isfinite(constraint.high):
        bad.append(constraint.high if constraint.high_open else constraint.high + 0.5)
    if constraint.integer:
        bad.append(max(constraint.low, 0) + 1.5)
    return bad


# --- the primitives ------------------------------------------------------------------------------------------------


def test_interval_bounds_and_messages() -> None:
    c = Interval(0.0, math.pi / 2, low_open=True)
    assert 1.0 in c and math.pi / 2 in c
    assert 0.0 not in c and 1.6 not in c and float("nan") not in c and True not in c and "1" not in c
    assert str(c) == "a number in (0, pi/2] (pi = 3.141593)"
    assert str(Interval(1, integer=True)) == "an integer >= 1"
    assert 2 in Interval(1, integer=True) and 2.0 in Interval(1, integer=True) and 2.5 not in Interval(1, integer=True)
    assert None in Interval(0.0, allow_none=True)
    with pytest.raises(ConfigError, match=r"loss\.c_policy\.c=2 is invalid: it must be a number in \(0, pi/2\]"):
        check_value("loss.c_policy.c", 2, c)


def test_one_of_is_type_strict() -> None:
    choices = OneOf(("error", "skip"))
    assert "skip" in choices and "Skip" not in choices
    assert True not in OneOf((1, 2))  # True == 1 in Python; a bool is not an enum value here
    with pytest.raises(ConfigError, match="data.on_bad_image='drop' is invalid: it must be one of 'error', 'skip'"):
        check_value("data.on_bad_image", "drop", choices)


# --- the shipped configs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [f"loss={o}" for o in _options("loss")]
    + [f"loss/c_policy={o}" for o in _options("loss/c_policy")]
    + [
        f"{g}={o}"
        for g in ("optimizer", "scheduler", "trainer", "backbone", "logger", "callbacks")
        for o in _options(g)
    ]
    + [f"experiment={o}" for o in _options("experiment")],
)
def test_every_shipped_option_validates(compose_cfg, override: str) -> None:
    cfg = compose_cfg(override)
    validate_config(cfg)
    if override == "backbone=timm":  # model_name: ??? on purpose; the run must be told which timm model
        with pytest.raises(MissingMandatoryValue, match="backbone.model_name"):
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        cfg = compose_cfg(override, "backbone.model_name=efficientnet_b0")
    # validate_config skips values it cannot resolve yet (${hydra:...} outside a run) and interpolated nodes
    # (model.head: ${loss}). Resolved, nothing is skipped: every interpolation must resolve, and every resolved value
    # is checked, wherever it is used.
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    validate_config(OmegaConf.create(resolved))
    # The option is what the run gets: the objects its own file configures are in the composed config.
    group, option = override.split("=")
    own = OmegaConf.to_container(OmegaConf.load(CONFIGS / group / f"{option}.yaml"), resolve=False)
    node = resolved
    if group != "experiment":  # the experiments are global (# @package _global_); other groups sit at their path
        for part in group.split("/"):
            node = node[part]
    assert _targets(own).items() <= _targets(node).items(), override  # (options that only list defaults: empty)


def _targets(node: object, prefix: str = "") -> dict[str, str]:
    """Dotted key -> ``_target_`` of every object node under a plain (container) config."""
    out: dict[str, str] = {}
    if isinstance(node, dict):
        if "_target_" in node:
            out[prefix.rstrip(".")] = node["_target_"]
        for key, value in node.items():
            if key != "defaults":
                out |= _targets(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out |= _targets(item, f"{prefix}{i}.")
    return out


def _constrained_keys() -> list[tuple[str, str, str]]:
    """(loss option, key, target) for every constrained key that the option's YAML sets."""
    out = []
    for option in _options("loss"):
        node = OmegaConf.load(CONFIGS / "loss" / f"{option}.yaml")
        target = get_object(node["_target_"])
        for key in target.config_constraints:
            if key in node:
                out.append((option, key, node["_target_"]))
    return out


@pytest.mark.parametrize(("option", "key", "target"), _constrained_keys())
def test_out_of_range_loss_value_names_key_and_range(compose_cfg, option: str, key: str, target: str) -> None:
    constraint = get_object(target).config_constraints[key]
    for value in _outside(constraint):
        text = "null" if value is None else repr(value) if isinstance(value, str) else str(value)
        cfg = compose_cfg(f"loss={option}", f"loss.{key}={text}")
        with pytest.raises(ConfigError) as info:
            validate_config(cfg)
        assert f"loss.{key}=" in str(info.value) and str(constraint) in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["loss/c_policy=fixed", "loss.c_policy.c=0"],
            r"loss\.c_policy\.c=0 is invalid: it must be a number in \(0, pi/2\]",
        ),
        (["loss/c_policy=linear", "loss.c_policy.stop=1.6"], r"loss\.c_policy\.stop=1\.6 is invalid"),
        (["loss/c_policy=linear", "loss.c_policy.start=1.0", "loss.c_policy.stop=1.2"], r"loss\.c_policy: stop=1\.2"),
        (["loss/c_policy=adaptive", "loss.c_policy.momentum=0"], r"loss\.c_policy\.momentum=0 is invalid"),
        (["loss/c_policy=adaptive", "loss.c_policy.c_min=1.5", "loss.c_policy.start=1.0"], r"c_min=1\.5 must be <="),
    ],
)
def test_cam_softmax_policies(compose_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_cfg("loss=cam_softmax", *overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=sphereface", "loss.m=2.5"], r"loss\.m=2\.5 is invalid: it must be an integer >= 1"),
        (["loss=magface", "loss.l_m=0.9"], r"loss: l_m=0\.9 must be < u_m=0\.8"),
        (["optimizer=sgd", "optimizer.lr=0"], r"optimizer\.lr=0 is invalid: it must be a number > 0"),
        (["optimizer=sgd", "optimizer.momentum=1.0"], r"optimizer\.momentum=1\.0 is invalid"),
        (["optimizer=adamw", "optimizer.weight_decay=-1"], r"optimizer\.weight_decay=-1 is invalid"),
        (["trainer.precision=bf15"], r"trainer\.precision='bf15' is invalid: it must be one of"),
        (["trainer.max_epochs=-2"], r"trainer\.max_epochs=-2 is invalid"),
        (["trainer.accelerator=tpuu"], r"trainer\.accelerator='tpuu' is invalid"),
        (["+trainer.max_epoch=2"], r"trainer\.max_epoch is not a parameter .* did you mean trainer\.max_epochs\?"),
        (["+loss.margn=0.3", "loss=arcface"], r"loss\.margn is not a parameter .* did you mean loss\.margin\?"),
        (
            ["+scheduler.warmup_fractoin=0.1"],
            r"scheduler\.warmup_fractoin .* did you mean scheduler\.warmup_fraction\?",
        ),
        (["loss._target_=facetrain.losses.NoSuchHead"], r"loss\._target_='facetrain\.losses\.NoSuchHead' cannot be"),
    ],
)
def test_bad_values_and_keys(compose_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_cfg(*overrides))


# --- constructors and declared constraints agree -------------------------------------------------------------------


@pytest.mark.parametrize("option", _options("loss"))
def test_head_constructors_refuse_what_the_schema_refuses(compose_cfg, option: str) -> None:
    """The schema is checked at config time, the constructors on the Python API: they must agree."""
    cfg = compose_cfg(f"loss={option}")
    node = OmegaConf.to_container(cfg.loss, resolve=True)
    target = get_object(node.pop("_target_"))
    node.pop("_partial_", None)
    kwargs = {k: v for k, v in node.items() if not isinstance(v, dict)}
    target(embedding_size=8, num_classes=4, **kwargs)  # defaults are valid
    for key, constraint in target.config_constraints.items():
        for value in _outside(constraint):
            if isinstance(value, str) or value is None and key in ("embedding_size", "num_classes"):
                continue  # type errors of the Python API are not range checks
            args = {"embedding_size": 8, "num_classes": 4, **kwargs, key: value}
            try:
                target(**args)
            except (ValueError, TypeError):
                continue
            pytest.fail(f"{target.__name__}({key}={value!r}) was accepted")
