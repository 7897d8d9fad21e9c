"""Declared rules for argument values: one declaration per rule, enforced by the constructor and by the config check.

A class declares the valid values of its arguments once, as data, in a ``config_constraints`` class attribute built
from the rule objects here (:class:`Interval`, :class:`OneOf`, :class:`Each`), and calls :func:`check_args` once in
its constructor. :func:`facetrain.utils.schema.validate_config` enforces the same declaration on the composed config
before anything is built, with the config key in the message. This module imports nothing beyond the standard
library, so the inference API and the data readers can use it without Hydra.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
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
        facetrain.utils.rules.ConfigError: Head.margin=4.0 is invalid: it must be a number in [0, pi) (pi = 3.141593)
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
