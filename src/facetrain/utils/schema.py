"""Config validation before anything is built: unknown keys and out-of-range values, named by their config key.

One rule, one declaration: a class declares the valid values of its arguments once, as data, in a
``config_constraints`` class attribute built from the rule objects here (:class:`Interval`, :class:`OneOf`,
:class:`Each`). The same declaration is enforced twice:

* at config time by :func:`validate_config`, on every ``_target_`` node of the composed config, with the config key
  in the message (``loss.margin=3.5 is invalid: it must be a number in [0, pi) ...``);
* on the Python API by :func:`check_args`, the one call a constructor (or a dataclass's ``__post_init__``) makes,
  with the argument name in the message.

What :func:`validate_node` checks per node:

* **keys**: each key must be a parameter of the target's signature (``trainer.max_epoch`` fails with "did you mean
  max_epochs?"). When a constructor forwards ``**kwargs`` to its parent, the parent's parameters count too;
  a chain that ends in an open ``**kwargs`` is not key-checked.
* **values**: the target's ``config_constraints``, or :data:`EXTERNAL_CONSTRAINTS` for third-party targets (torch
  optimizers, the Lightning ``Trainer``). A value outside its rule fails with the key, the valid range and the value.
* **relations**: a target may define a ``check_config(values) -> str | None`` classmethod for constraints between
  keys (a schedule's stop must not exceed its start); the message it returns is prefixed with the node's key.
  :func:`check_args` calls the same classmethod.

This runs in :func:`facetrain.tasks.train.train` before the data is scanned or generated, so a typo costs a second,
not a dataset scan. Nothing here runs on the training hot path: constructors check once.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facetrain.utils.instantiate import moved_target

__all__ = [
    "EXTERNAL_CONSTRAINTS",
    "FARS",
    "NON_NEGATIVE",
    "POSITIVE",
    "PROBABILITY",
    "ConfigError",
    "Constraint",
    "Each",
    "Interval",
    "OneOf",
    "check_args",
    "check_value",
    "validate_config",
    "validate_node",
]


class ConfigError(ValueError):
    """A config value or key that cannot work; the message names the key."""


def _fmt(x: float) -> str:
    """Bound for messages: multiples of π are written as such (c is in (0, pi/2], margins in [0, pi))."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    name = _pi_name(x)
    return name if name else f"{x:g}"


def _pi_name(x: float) -> str | None:
    for k, name in ((1.0, "pi"), (0.5, "pi/2"), (0.25, "pi/4")):
        if x != 0 and math.isclose(x, k * math.pi, rel_tol=0, abs_tol=1e-12):
            return name
    return None


@dataclass(frozen=True)
class Interval:
    """A real (or integer) range, optionally admitting None.

    NaN, infinities and bools are never inside (no setting here has a meaningful infinite value, and ``True`` is not
    the number 1). ``integer`` admits integer types only, not ``2.0``: a checked value can be used as a count as is.

    Attributes:
        low: Lower bound (``-inf`` for none).
        high: Upper bound (``inf`` for none).
        low_open: Exclude ``low``.
        high_open: Exclude ``high``.
        integer: Require an integer (bools are never numbers here).
        allow_none: Admit None (e.g. SphereFace's ``scale: null`` = feature-norm scale).
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    allow_none: bool = False

    def __contains__(self, value: object) -> bool:
        if value is None:
            return self.allow_none
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if math.isinf(self.high) and not math.isinf(self.low):
            text = f"{kind} {'>' if self.low_open else '>='} {_fmt(self.low)}"
        elif math.isinf(self.low) and not math.isinf(self.high):
            text = f"{kind} {'<' if self.high_open else '<='} {_fmt(self.high)}"
        else:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"
        if any(_pi_name(b) for b in (self.low, self.high)):
            text += f" (pi = {math.pi:.6f})"
        return text + (" or null" if self.allow_none else "")


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (an enum setting such as ``precision`` or ``on_bad_image``)."""

    choices: tuple[Any, ...]

    def __contains__(self, value: object) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class Each:
    """A list (or tuple) whose every item satisfies ``rule``, with at least ``min_len`` items (FARs, ranks)."""

    rule: Interval | OneOf
    min_len: int = 0

    def __contains__(self, value: object) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) < self.min_len:
            return False
        return all(item in self.rule for item in value)

    def __str__(self) -> str:
        size = {0: "a list", 1: "a non-empty list"}.get(self.min_len, f"a list of >= {self.min_len} items")
        return f"{size}, each item {self.rule}"


#: A declared rule: what ``config_constraints`` maps each argument name to.
Constraint = Interval | OneOf | Each

POSITIVE = Interval(0.0, low_open=True)
NON_NEGATIVE = Interval(0.0)
PROBABILITY = Interval(0.0, 1.0)
#: False-accept (or false-positive identification) rates at which a protocol reports: each in (0, 1].
FARS = Each(Interval(0.0, 1.0, low_open=True))

#: Constraints of third-party targets, keyed by their ``_target_`` path. The ranges are the ones the libraries
#: themselves accept (torch raises on a negative lr only at the first step; Lightning on precision at construction).
EXTERNAL_CONSTRAINTS: dict[str, dict[str, Constraint]] = {
    "torch.optim.SGD": {
        "lr": POSITIVE,
        "momentum": Interval(0.0, 1.0, high_open=True),
        "dampening": PROBABILITY,
        "weight_decay": NON_NEGATIVE,
    },
    "torch.optim.AdamW": {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "eps": POSITIVE},
    "torch.optim.Adam": {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "eps": POSITIVE},
    "pytorch_lightning.Trainer": {
        "max_epochs": Interval(-1, integer=True, allow_none=True),
        "max_steps": Interval(-1, integer=True),
        "devices": Interval(-1, integer=True),  # an int count; strings such as "auto" or "0,1" are not range-checked
        "num_nodes": Interval(1, integer=True),
        "log_every_n_steps": Interval(1, integer=True, allow_none=True),
        "accumulate_grad_batches": Interval(1, integer=True),
        "gradient_clip_val": Interval(0.0, allow_none=True),
        "check_val_every_n_epoch": Interval(1, integer=True, allow_none=True),
        "precision": OneOf(
            ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
            + ("64", "32", "16", "bf16", 64, 32, 16)  # Lightning's short aliases
        ),
        "accelerator": OneOf(("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    },
}


def check_value(key: str, value: object, constraint: Constraint) -> None:
    """Raises :class:`ConfigError` naming ``key``, the valid range and ``value`` unless ``value`` satisfies it."""
    plain = isinstance(value, (str, int, float, bool)) or value is None  # objects (e.g. a Strategy) are not enums
    if (not isinstance(constraint, OneOf) or plain) and value not in constraint:
        raise ConfigError(f"{key}={value!r} is invalid: it must be {constraint}")


def check_args(owner: object, values: Mapping[str, object] | None = None, *, prefix: str | None = None) -> None:
    """Enforces a class's declared rules on the Python API: the one check call of a constructor.

    The rules are the class's ``config_constraints`` (the declaration :func:`validate_config` enforces at config time),
    so the Python API and the config refuse the same values with the same rule text. Then the class's
    ``check_config`` classmethod, if any, checks the relations between arguments.

    Args:
        owner: The class, or an instance of it (``self`` in ``__init__`` / ``__post_init__``).
        values: Argument name -> value, typically ``locals()`` in ``__init__`` (names without a rule are ignored);
            None for a dataclass instance: its fields.
        prefix: What names the arguments in messages: the config path where there is one (``eval.lfw``), else the
            class name (``ArcFaceHead.margin=4.0 is invalid: ...``).

    Raises:
        ConfigError: The first argument outside its rule, or the relation ``check_config`` reports.

    Example:
        >>> class Head:
        ...     config_constraints = {"margin": Interval(0.0, math.pi, high_open=True)}
        ...     def __init__(self, margin: float = 0.5) -> None:
        ...         check_args(self, locals())
        >>> Head(margin=4.0)
        Traceback (most recent call last):
        ...
        facetrain.utils.schema.ConfigError: Head.margin=4.0 is invalid: it must be a number in [0, pi) (pi = 3.141593)
    """
    cls = owner if inspect.isclass(owner) else type(owner)
    if values is None:
        values = {f.name: getattr(owner, f.name) for f in dataclasses.fields(owner)}  # type: ignore[arg-type]
    args = {k: v for k, v in values.items() if k != "self" and not k.startswith("__")}
    prefix = cls.__name__ if prefix is None else prefix
    for name, rule in getattr(cls, "config_constraints", {}).items():
        if name in args:
            check_value(f"{prefix}.{name}", args[name], rule)
    cross_check = getattr(cls, "check_config", None)
    if callable(cross_check):
        problem = cross_check(args)
        if problem:
            raise ConfigError(f"{prefix}: {problem}")


def _constraints(target: Any, path: str) -> Mapping[str, Constraint]:
    own = getattr(target, "config_constraints", None)
    if isinstance(own, Mapping):
        return own
    return EXTERNAL_CONSTRAINTS.get(path, {})


def _accepted_keys(target: Any) -> set[str] | None:
    """Parameter names the target accepts, following ``**kwargs`` up the MRO; None when it accepts any key."""
    callables: Iterable[Any] = [target]
    if inspect.isclass(target):
        callables = [c.__init__ for c in target.__mro__ if "__init__" in vars(c) and c is not object]
    names: set[str] = set()
    for fn in callables:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature: nothing to check against
            return None
        names.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def _value(node: DictConfig, key: str, lists: bool = False) -> tuple[bool, Any]:
    """(True, value) when ``node[key]`` resolves to a plain value here (or, with ``lists``, a list of them);
    (False, None) for nested or unresolvable."""
    try:
        value = node[key]
        if lists and isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException:  # ??? or an interpolation only resolvable later (${hydra:...} outside a run)
        return False, None
    if isinstance(value, (DictConfig, ListConfig)):
        return False, None
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return False, None
    return True, value


def validate_node(node: DictConfig, key: str) -> None:
    """Checks one ``_target_`` node (keys and values) and recurses into its children.

    Args:
        node: The config node.
        key: Its dotted path in the config (``loss``, ``loss.c_policy``), used in every message.

    Raises:
        ConfigError: An unimportable target, an unknown key or a value out of range.
    """
    if "_target_" in node:
        path = str(node["_target_"])
        try:
            target = get_object(path)
        except Exception as exc:  # noqa: BLE001 - Hydra raises several types; the message is what matters
            raise ConfigError(moved_target(key, path) or f"{key}._target_={path!r} cannot be imported: {exc}") from None
        accepted = _accepted_keys(target)
        if accepted is not None:
            for name in node:
                if isinstance(name, str) and not name.startswith("_") and name not in accepted:
                    close = difflib.get_close_matches(name, sorted(accepted), n=1)
                    hint = f"; did you mean {key}.{close[0]}?" if close else ""
                    valid = ", ".join(sorted(a for a in accepted if a != "self"))
                    raise ConfigError(f"{key}.{name} is not a parameter of {path}{hint} (valid keys: {valid})")
        for name, constraint in _constraints(target, path).items():
            if name in node:
                ok, value = _value(node, name, lists=isinstance(constraint, Each))
                if ok:
                    check_value(f"{key}.{name}", value, constraint)
        cross_check = getattr(target, "check_config", None)
        if callable(cross_check):  # relations between keys (stop <= start); the message names the keys
            values = {
                n: v for n in node if isinstance(n, str) and not n.startswith("_") for ok, v in [_value(node, n)] if ok
            }
            problem = cross_check(values)
            if problem:
                raise ConfigError(f"{key}: {problem}")
    for name in node:
        child = node._get_node(name)
        if child is None or child._is_interpolation():  # e.g. model.head: ${loss} is checked where it is defined
            continue
        ok, _ = _value(node, name)
        if ok:
            continue
        try:
            sub = node[name]
        except OmegaConfBaseException:
            continue
        if isinstance(sub, DictConfig):
            validate_node(sub, f"{key}.{name}")
        elif isinstance(sub, ListConfig):
            for i, item in enumerate(sub):
                if isinstance(item, DictConfig):
                    validate_node(item, f"{key}.{name}[{i}]")


#: Top-level groups that are not object configs (Hydra's own settings and plain paths).
SKIP_GROUPS = frozenset({"hydra", "paths"})


def validate_config(cfg: DictConfig, skip: Iterable[str] = SKIP_GROUPS) -> None:
    """Validates every ``_target_`` node of a composed config before anything is instantiated.

    Raises:
        ConfigError: The first invalid key or value, named by its dotted config key.
    """
    skipped = set(skip)
    for name in cfg:
        if name in skipped:
            continue
        child = cfg._get_node(name)
        if child is None or child._is_interpolation():
            continue
        try:
            sub = cfg[name]
        except OmegaConfBaseException:
            continue
        if isinstance(sub, DictConfig):
            validate_node(sub, str(name))
