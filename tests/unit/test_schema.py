"""Config validation (facetrain.utils.schema): every option composes clean; bad keys and values name the key."""

from __future__ import annotations

import math
from functools import partial

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from facetrain.classifier.sharded import ShardedClassifier
from facetrain.data.noise import LabelNoiseConfig
from facetrain.evaluation.protocols import OpenSetProtocol, PairProtocol, VideoPairProtocol
from facetrain.evaluation.protocols_ijb import IjbProtocol, TinyFaceProtocol
from facetrain.losses import AdaptiveC, ArcFaceHead, LinearC, MagFaceHead
from facetrain.utils.rules import FARS, ConfigError, Constraint, Each, Interval, OneOf, check_args, check_value
from facetrain.utils.schema import validate_config, validate_node
from tests.conftest import CONFIGS


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _outside(constraint: Constraint) -> list[object]:
    """Values just outside a constraint (each must be refused)."""
    if isinstance(constraint, OneOf):
        return ["not-a-choice"] + ([1] if True in constraint.choices else [])
    if isinstance(constraint, Each):
        bad_items = [[v] for v in _outside(constraint.rule) if v is not None and not isinstance(v, str)]
        return ["text", 0.5, *bad_items] + ([[]] if constraint.min_len else [])
    bad: list[object] = ["text", math.inf, math.nan]
    if not constraint.allow_none:
        bad.append(None)
    if math.isfinite(constraint.low):
        bad.append(constraint.low if constraint.low_open else constraint.low - 0.5)
    if math.isfinite(constraint.high):
        bad.append(constraint.high if constraint.high_open else constraint.high + 0.5)
    if constraint.integer:
        bad += [max(constraint.low, 0) + 1.5, float(max(constraint.low, 0) + 1)]  # 2.0 is not an integer count
    return bad


# --- the primitives ------------------------------------------------------------------------------------------------


def test_interval_bounds_and_messages() -> None:
    c = Interval(0.0, math.pi / 2, low_open=True)
    assert 1.0 in c and math.pi / 2 in c
    assert 0.0 not in c and 1.6 not in c and float("nan") not in c and True not in c and "1" not in c
    assert str(c) == "a number in (0, pi/2] (pi = 3.141593)"
    assert str(Interval(1, integer=True)) == "an integer >= 1"
    assert 2 in Interval(1, integer=True) and 2.5 not in Interval(1, integer=True)
    assert None in Interval(0.0, allow_none=True)
    with pytest.raises(ConfigError, match=r"loss\.c_policy\.c=2 is invalid: it must be a number in \(0, pi/2\]"):
        check_value("loss.c_policy.c", 2, c)


def test_one_of_is_type_strict() -> None:
    choices = OneOf(("error", "skip"))
    assert "skip" in choices and "Skip" not in choices
    assert True not in OneOf((1, 2))  # True == 1 in Python; a bool is not an enum value here
    with pytest.raises(ConfigError, match="data.on_bad_image='drop' is invalid: it must be one of 'error', 'skip'"):
        check_value("data.on_bad_image", "drop", choices)


def test_interval_refuses_infinities_and_non_integer_counts() -> None:
    assert math.inf not in Interval(0.0) and -math.inf not in Interval() and 1e308 in Interval()
    assert 2.0 not in Interval(1, integer=True) and 2 in Interval(1, integer=True)
    assert str(Interval(0.0, 1.0, low_open=True, allow_none=True)) == "a number in (0, 1] or null"


def test_each_checks_every_item_of_a_list() -> None:
    assert [1e-6, 1.0] in FARS and (0.5,) in FARS and [] in FARS
    assert [0.0] not in FARS and [0.5, 1.5] not in FARS and 0.5 not in FARS and "0.5" not in FARS
    ranks = Each(Interval(1, integer=True), min_len=1)
    assert [] not in ranks and [1, 5] in ranks and [1.5] not in ranks
    assert str(FARS) == "a list, each item a number in (0, 1]"
    assert str(ranks) == "a non-empty list, each item an integer >= 1"
    with pytest.raises(ConfigError, match=r"eval\.lfw\.fars=\[0\.5, 2\] is invalid: it must be a list, each item"):
        check_value("eval.lfw.fars", [0.5, 2], FARS)


class _Declared:
    config_constraints = {"margin": Interval(0.0, 1.0), "k": Interval(1, integer=True)}

    @classmethod
    def check_config(cls, values: dict[str, object]) -> str | None:
        return "k=3 is unlucky" if values.get("k") == 3 else None

    def __init__(self, margin: float = 0.5, k: int = 1, note: str = "not a rule") -> None:
        check_args(self, locals())


def test_check_args_enforces_the_declaration_and_the_relation() -> None:
    _Declared()
    with pytest.raises(ConfigError, match=r"^_Declared\.margin=2 is invalid: it must be a number in \[0, 1\]$"):
        _Declared(margin=2)
    with pytest.raises(ConfigError, match=r"^ham\.k=0 is invalid: it must be an integer >= 1$"):
        check_args(_Declared, {"k": 0, "note": 5}, prefix="ham")  # keys without a rule are not checked
    with pytest.raises(ConfigError, match=r"^_Declared: k=3 is unlucky$"):
        _Declared(k=3)
    # A dataclass passes its fields (values=None).
    with pytest.raises(ConfigError, match=r"^data\.label_noise\.seed=-1 is invalid: it must be an integer >= 0$"):
        LabelNoiseConfig("symmetric", 0.1, -1)


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
    cfg = compose_cfg(f"loss={option}")
    for value in _outside(constraint):
        cfg.loss[key] = value  # as the override loss.<key>=<value> would set it (composing once keeps this fast)
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


# --- one declaration, two enforcers: the config and the constructor refuse the same values with the same text -------


def _declared() -> list[tuple[str, type, dict[str, object]]]:
    """(config key, class, valid keyword arguments) of every class whose constructor enforces declared rules."""
    out: list[tuple[str, type, dict[str, object]]] = []
    for group in ("loss", "loss/c_policy"):
        for option in _options(group):
            node = OmegaConf.to_container(OmegaConf.load(CONFIGS / group / f"{option}.yaml"), resolve=False)
            target = get_object(node["_target_"])
            kwargs = {  # interpolations (${oc.select:...}) resolve only in the composed config: defaults then
                k: v
                for k, v in node.items()
                if not k.startswith("_") and k != "defaults" and not (isinstance(v, str) and "${" in v)
            }
            if group == "loss":
                kwargs = {"embedding_size": 8, "num_classes": 4, **kwargs}
            out.append((group.replace("/", "."), target, kwargs))
    out += [
        ("eval.x", PairProtocol, {"name": "x"}),
        ("eval.x", VideoPairProtocol, {"name": "x"}),
        ("eval.x", OpenSetProtocol, {"name": "x"}),
        ("eval.x", IjbProtocol, {"name": "x"}),
        ("eval.x", TinyFaceProtocol, {"name": "x"}),
        ("data.label_noise", LabelNoiseConfig, {"kind": "symmetric", "rate": 0.1}),
        ("classifier", ShardedClassifier, {"head": partial(ArcFaceHead), "embedding_size": 8, "num_classes": 4}),
    ]
    return out


def _rule_cases() -> list[object]:
    return [
        pytest.param(key, target, kwargs, name, value, id=f"{target.__name__}.{name}={value!r}")
        for key, target, kwargs in _declared()
        for name, rule in target.config_constraints.items()
        for value in _outside(rule)
    ]


def _after_key(message: str, name: str) -> str:
    """The message from ``<name>=`` on: the value and the rule text, without the config key / class prefix."""
    assert f".{name}=" in message, message
    return message.split(f".{name}=", 1)[1]


@pytest.mark.parametrize(("key", "target", "kwargs", "name", "value"), _rule_cases())
def test_config_and_constructor_refuse_the_same_value_with_the_same_rule(
    key: str, target: type, kwargs: dict[str, object], name: str, value: object
) -> None:
    rule = target.config_constraints[name]
    path = f"{target.__module__}.{target.__qualname__}"
    node = OmegaConf.create({"_target_": path, **{k: v for k, v in kwargs.items() if k != "head"}, name: value})
    with pytest.raises(ConfigError) as at_config:
        validate_node(node, key)
    with pytest.raises(ConfigError) as at_construction:
        target(**{**kwargs, name: value})
    assert str(at_config.value).startswith(f"{key}.{name}=")
    assert f"is invalid: it must be {rule}" in str(at_config.value)
    assert _after_key(str(at_construction.value), name) == _after_key(str(at_config.value), name)


@pytest.mark.parametrize(("key", "target", "kwargs"), [pytest.param(*d, id=d[1].__name__) for d in _declared()])
def test_declared_defaults_build_and_validate(key: str, target: type, kwargs: dict[str, object]) -> None:
    target(**kwargs)  # the shipped / documented values pass both enforcers
    path = f"{target.__module__}.{target.__qualname__}"
    validate_node(OmegaConf.create({"_target_": path, **{k: v for k, v in kwargs.items() if k != "head"}}), key)


@pytest.mark.parametrize(
    ("key", "target", "kwargs", "relation"),
    [
        ("loss", MagFaceHead, {"embedding_size": 8, "num_classes": 4, "l_m": 0.9, "u_m": 0.8}, "l_m=0.9 must be <"),
        ("loss", MagFaceHead, {"embedding_size": 8, "num_classes": 4, "l_a": 10, "u_a": 10}, "l_a=10 must be <"),
        ("loss.c_policy", LinearC, {"start": 1.0, "stop": 1.2}, "stop=1.2 must be <= start=1.0"),
        ("loss.c_policy", AdaptiveC, {"start": 1.0, "c_min": 1.2}, "c_min=1.2 must be <= start=1.0"),
    ],
)
def test_relations_are_refused_by_both_with_the_same_text(
    key: str, target: type, kwargs: dict[str, object], relation: str
) -> None:
    path = f"{target.__module__}.{target.__qualname__}"
    with pytest.raises(ConfigError) as at_config:
        validate_node(OmegaConf.create({"_target_": path, **kwargs}), key)
    with pytest.raises(ConfigError) as at_construction:
        target(**kwargs)
    assert str(at_config.value) == f"{key}: {str(at_config.value).split(': ', 1)[1]}"
    assert relation in str(at_config.value)
    assert str(at_construction.value).split(": ", 1)[1] == str(at_config.value).split(": ", 1)[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["eval=[lfw]", "eval.lfw.fars=[0.5,0.0]"],
            r"eval\.lfw\.fars=\[0\.5, 0\.0\] is invalid: it must be a list, each",
        ),
        (["eval=[ijbc]", "eval.ijbc.fpirs=[2]"], r"eval\.ijbc\.fpirs=\[2\] is invalid: .* in \(0, 1\]"),
        (["eval=[openset]", "eval.openset.ver_far=0"], r"eval\.openset\.ver_far=0 is invalid: .* \(0, 1\] or null"),
    ],
)
def test_protocol_rules_are_checked_at_config_time(compose_cfg, overrides: list[str], message: str) -> None:
    """The eval entries carry their protocol's declaration, so a bad FAR list is refused before any file is read."""
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_cfg(*overrides))
