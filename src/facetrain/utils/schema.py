"""Config validation before anything is built: unknown keys and out-of-range values, named by their config key.

One rule, one declaration: a class declares the valid values of its arguments once, as data, in a
``config_constraints`` class attribute built from the rule objects of :mod:`facetrain.utils.rules`
(``Interval``, ``OneOf``, ``Each``). The same declaration is enforced twice:

* at config time by :func:`validate_config`, on every ``_target_`` node of the composed config, with the config key
  in the message (``loss.margin=3.5 is invalid: it must be a number in [0, pi) ...``);
* on the Python API by :func:`~facetrain.utils.rules.check_args`, the one call a constructor (or a dataclass's
  ``__post_init__``) makes, with the argument name in the message.

What :func:`validate_node` checks per node:

* **keys**: each key must be a parameter of the target's signature (``trainer.max_epoch`` fails with "did you mean
  max_epochs?"). When a constructor forwards ``**kwargs`` to its parent, the parent's parameters count too;
  a chain that ends in an open ``**kwargs`` is not key-checked.
* **values**: the target's ``config_constraints``, or :data:`EXTERNAL_CONSTRAINTS` for third-party targets (torch
  optimizers, the Lightning ``Trainer``). A value outside its rule fails with the key, the valid range and the value.
* **relations**: a target may define a ``check_config(values) -> str | None`` classmethod for constraints between
  keys (a schedule's stop must not exceed its start); the message it returns is prefixed with the node's key.
  :func:`~facetrain.utils.rules.check_args` calls the same classmethod.

This runs in :func:`facetrain.tasks.train.train` before the data is scanned or generated, so a typo costs a second,
not a dataset scan. Nothing here runs on the training hot path: constructors check once.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facetrain.utils.instantiate import moved_target
from facetrain.utils.rules import (
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    ConfigError,
    Constraint,
    Each,
    Interval,
    OneOf,
    check_value,
)

__all__ = [
    "EXTERNAL_CONSTRAINTS",
    "validate_config",
    "validate_node",
]


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
