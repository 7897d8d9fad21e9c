"""Reading a Hydra multirun directory: each job's config, overrides, Hydra choices and ``metrics.json``.

Hydra writes every job of ``python train.py -m ...`` to ``<sweep dir>/<subdir>/`` with ``.hydra/config.yaml`` (the
composed config, interpolations unresolved), ``.hydra/overrides.yaml`` (the job's command-line overrides),
``.hydra/hydra.yaml`` (Hydra's own config, incl. ``runtime.choices``) and, once the training task finished, our
``metrics.json``. Only the evaluation part of each config is resolved here (to compare protocols); Hydra's
``${hydra:...}`` interpolations are filled from the job's own ``hydra.yaml`` rather than from Hydra's global state.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "PROTOCOL_IGNORED_KEYS",
    "Job",
    "NotAMultirunError",
    "ProtocolMismatchError",
    "TableInputError",
    "check_same_protocol",
    "load_job",
    "load_multirun",
    "parse_overrides",
]

#: Evaluation settings that change how fast or where results are written, not what is measured.
PROTOCOL_IGNORED_KEYS = frozenset(
    {"every_n_epochs", "batch_size", "num_workers", "dirpath", "save_curves", "save_embeddings", "cache", "workers"}
)

_HYDRA_INTERPOLATION = re.compile(r"\$\{hydra:([^}]+)\}")


class TableInputError(Exception):
    """The input cannot make a table (``scripts/make_table.py`` exits with status 2)."""


class NotAMultirunError(TableInputError):
    """The directory holds no Hydra multirun jobs."""


class ProtocolMismatchError(TableInputError):
    """The jobs were evaluated with different protocols, so their numbers cannot share a table."""


@dataclass(frozen=True)
class Job:
    """One job of a multirun.

    Attributes:
        path: The job directory.
        name: Its path relative to the sweep directory (Hydra's job number by default).
        config: ``.hydra/config.yaml`` as plain data, interpolations unresolved.
        overrides: ``.hydra/overrides.yaml``: the job's overrides as ``key=value`` strings.
        choices: ``hydra.runtime.choices`` (config group → option) from ``.hydra/hydra.yaml``.
        metrics: ``metrics.json``, or None when the job left none (failed, killed or still running).
        metrics_error: Why ``metrics.json`` could not be read, if it exists but is broken.
        protocol: The evaluation settings, resolved where possible, without :data:`PROTOCOL_IGNORED_KEYS`.
    """

    path: Path
    name: str
    config: dict[str, Any]
    overrides: list[str]
    choices: dict[str, Any]
    metrics: dict[str, Any] | None
    metrics_error: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def override_values(self) -> dict[str, str]:
        """The overrides as ``{key: value}`` (``+``/``++`` prefixes dropped, deletions ``~key`` left out)."""
        return parse_overrides(self.overrides)

    def value(self, key: str) -> Any:
        """The job's value of ``key``: its override, else its config group choice, else the dotted config key.

        Raises:
            TableInputError: The job has no such value, or it is a whole config node rather than a value.
        """
        overrides = self.override_values
        if key in overrides:
            return _scalar(overrides[key])
        if key in self.choices and self.choices[key] is not None:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise TableInputError(
                    f"job {self.name}: {key!r} is neither an override, a config group nor a config key"
                )
            node = node[part]
        if isinstance(node, (Mapping, list)):
            raise TableInputError(f"job {self.name}: {key!r} is a config node, not a value that can label a row")
        return node


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["loss=arcface", "+paper=x", "~foo"]`` → ``{"loss": "arcface", "paper": "x"}``."""
    out: dict[str, str] = {}
    for item in overrides:
        if item.startswith("~") or "=" not in item:
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+")] = value
    return out


def _scalar(text: str) -> Any:
    """An override's value as YAML reads it (``0.2`` → 0.2, ``arcface`` → "arcface")."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def _read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _read_metrics(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"metrics.json is unreadable ({error})"
    if not isinstance(data, dict):
        return None, "metrics.json is not a JSON object"
    return data, None


def _fill_hydra(value: Any, hydra: Any) -> Any:
    """Replace ``${hydra:x.y}`` in strings by the job's own ``hydra.x.y`` (no global Hydra state involved).

    Args:
        value: Plain config data.
        hydra: The job's ``hydra`` node as a DictConfig.
    """
    if isinstance(value, Mapping):
        return {k: _fill_hydra(v, hydra) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_hydra(v, hydra) for v in value]
    if isinstance(value, str) and "${hydra:" in value:

        def replace(match: re.Match[str]) -> str:
            found = OmegaConf.select(hydra, match.group(1).strip(), default=None, throw_on_resolution_failure=False)
            return match.group(0) if found is None else str(found)

        return _HYDRA_INTERPOLATION.sub(replace, value)
    return value


def _without(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {k: _without(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_without(v, ignored) for v in value]
    return value


def _protocol(config: Mapping[str, Any], hydra: Mapping[str, Any]) -> dict[str, Any]:
    """The ``eval`` node, resolved against the job's own config, minus speed/output settings."""
    raw_eval = config.get("eval") or {}
    try:
        filled = _fill_hydra(dict(config), OmegaConf.create(dict(hydra)))
        filled.pop("hydra", None)
        resolved = OmegaConf.to_container(OmegaConf.create(filled).get("eval") or {}, resolve=True)
    except (OmegaConfBaseException, ValueError, TypeError):
        # e.g. ${now:...} or a custom resolver: compare the unresolved text, which is the same in every job of a
        # sweep unless the job's own overrides changed it.
        resolved = raw_eval
    return _without(resolved, PROTOCOL_IGNORED_KEYS)


def load_job(path: Path, root: Path) -> Job:
    """Read one job directory (``path/.hydra/*.yaml`` and ``path/metrics.json``)."""
    hydra_dir = path / ".hydra"
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    overrides_path = hydra_dir / "overrides.yaml"
    overrides = [str(o) for o in (_read_yaml(overrides_path) or [])] if overrides_path.is_file() else []
    hydra_path = hydra_dir / "hydra.yaml"
    hydra = ((_read_yaml(hydra_path) or {}).get("hydra") or {}) if hydra_path.is_file() else {}
    choices = dict((hydra.get("runtime") or {}).get("choices") or {})
    metrics, metrics_error = _read_metrics(path / "metrics.json")
    return Job(
        path=path,
        name=str(path.relative_to(root)),
        config=config,
        overrides=overrides,
        choices=choices,
        metrics=metrics,
        metrics_error=metrics_error,
        protocol=_protocol(config, hydra),
    )


def _job_sort_key(name: str) -> tuple[Any, ...]:
    """Numeric parts compare as numbers, so job 10 follows job 9."""
    return tuple(int(p) if p.isdigit() else math.inf for p in Path(name).parts) + (name,)


def load_multirun(root: str | Path) -> list[Job]:
    """All jobs under a multirun directory, in job-number order.

    Raises:
        NotAMultirunError: ``root`` is missing, is a single run, or has no job subdirectory with ``.hydra``.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotAMultirunError(f"{root} is not a directory")
    job_dirs = sorted(
        (p.parent.parent for p in root.rglob(".hydra/config.yaml") if p.parent.parent != root),
        key=lambda p: _job_sort_key(str(p.relative_to(root))),
    )
    if not job_dirs:
        found = sorted(p.name for p in root.iterdir())[:10]
        single = (
            " It is a single run (it has .hydra itself); a table needs a multirun (-m)."
            if (root / ".hydra").is_dir()
            else ""
        )
        raise NotAMultirunError(
            f"{root} is not a Hydra multirun directory: no job subdirectory has .hydra/config.yaml.{single} "
            f"Found: {found or 'nothing'}. Pass the sweep directory, e.g. logs/paper/<table>/<time>."
        )
    return [load_job(p, root) for p in job_dirs]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def check_same_protocol(jobs: list[Job]) -> None:
    """All jobs must share one evaluation protocol (same eval sets, files and options).

    Raises:
        ProtocolMismatchError: Naming each differing key with its values and the jobs that used them.
    """
    flat = {job.name: _flatten(job.protocol, "eval") for job in jobs}
    keys = sorted(set().union(*flat.values()))
    problems = []
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for name, values in flat.items():
            by_value.setdefault(values.get(key, "<not set>"), []).append(name)
        if len(by_value) > 1:
            parts = "; ".join(f"{value} in job(s) {', '.join(names)}" for value, names in by_value.items())
            problems.append(f"  {key}: {parts}")
    if problems:
        shown = "\n".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more keys" if len(problems) > 10 else "")
        raise ProtocolMismatchError(
            f"the {len(jobs)} jobs were evaluated with different protocols, so their numbers cannot share a table:\n"
            f"{shown}\nMake one table per protocol (separate sweep directories) or rerun with the same eval settings."
        )
