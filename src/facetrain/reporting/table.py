"""From the jobs of a multirun to a results table: rows × columns of mean ± std over seeds, with what was left out.

A paper config (``configs/paper/*.yaml``) describes its table under the ``table:`` key (:class:`TableSpec`): which
override names a row (``rows_key``, e.g. ``loss``), optionally which one is the x axis (``series_key``, e.g.
``data.label_noise.rate``), the columns (metric keys of ``metrics.json``) and the published reference numbers.
Every job contributes at most one value per cell; a job whose value is missing, ``"undefined"`` or not a finite
number is listed with the reason instead of being averaged in.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from facetrain.reporting.runs import Job, TableInputError, check_same_protocol

__all__ = ["Cell", "Column", "Exclusion", "Published", "Table", "TableSpec", "build_table", "spec_from_jobs"]

#: Overrides that may differ between the jobs of one table without being a row or a series.
REPLICATE_KEYS = frozenset({"seed", "ckpt_path"})


@dataclass(frozen=True)
class Column:
    """One column: a metric of ``metrics.json``.

    Attributes:
        label: Column header (also the key of published values).
        key: Metric name in ``metrics.json`` (``lfw/acc``).
        percent: Show ×100 (metrics are fractions; published accuracies are percentages).
    """

    label: str
    key: str
    percent: bool = False


@dataclass(frozen=True)
class Published:
    """A published reference result, printed beside ours and marked as such.

    Attributes:
        row: Method as the source names it.
        values: Column label → number, in the units shown (percent for percent columns).
        texts: Column label → the number as printed in the source (a quoted ``"99.30"`` keeps its last zero).
        source: Citation (paper, table, and the ``[Sx]`` tag of docs/protocols.md).
        setup: Network / data / protocol differences worth reading next to the number.
        series: The x value (e.g. noise rate) for series tables.
    """

    row: str
    values: dict[str, float]
    source: str
    setup: str = ""
    series: Any = None
    texts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableSpec:
    """What to tabulate (the ``table:`` node of a paper config).

    Attributes:
        name: File stem of the outputs.
        title: Caption.
        rows_key: The override (config group or dotted key) whose value names a row.
        columns: The metric columns.
        series_key: Optional second override, the x axis (one line per row in the figure).
        series_label: Header for the series values.
        series_percent: Show series values ×100 with a % sign.
        row_labels: Display names of row values; their order is the row order.
        notes: Sentences printed under the table.
        published: Reference results from the literature.
    """

    name: str
    title: str
    rows_key: str
    columns: tuple[Column, ...]
    series_key: str | None = None
    series_label: str | None = None
    series_percent: bool = False
    row_labels: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    published: tuple[Published, ...] = ()

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> TableSpec:
        """Build from config data; unknown or missing keys raise :class:`TableInputError` naming the key."""
        known = {
            "name", "title", "rows_key", "columns", "series_key", "series_label", "series_percent", "row_labels",
            "notes", "published",
        }  # fmt: skip
        unknown = sorted(set(node) - known)
        if unknown:
            raise TableInputError(f"table: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        for required in ("name", "rows_key", "columns"):
            if not node.get(required):
                raise TableInputError(f"table.{required} is required")
        columns = tuple(_column(c, i) for i, c in enumerate(node["columns"]))
        labels = [c.label for c in columns]
        if len(set(labels)) != len(labels):
            raise TableInputError(f"table.columns: labels must be unique, got {labels}")
        published = tuple(_published(p, i, set(labels)) for i, p in enumerate(node.get("published") or []))
        return cls(
            name=str(node["name"]),
            title=str(node.get("title") or node["name"]),
            rows_key=str(node["rows_key"]),
            columns=columns,
            series_key=node.get("series_key") or None,
            series_label=node.get("series_label") or None,
            series_percent=bool(node.get("series_percent", False)),
            row_labels={str(k): str(v) for k, v in (node.get("row_labels") or {}).items()},
            notes=tuple(str(n) for n in node.get("notes") or ()),
            published=published,
        )

    def row_label(self, value: Any) -> str:
        """Display name of a row value."""
        return self.row_labels.get(str(value), str(value))

    def series_text(self, value: Any) -> str:
        """Display text of a series value (``0.2`` → ``20%`` for percent series)."""
        if self.series_percent and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{100 * value:g}%"
        return str(value)


def _column(node: Any, index: int) -> Column:
    if not isinstance(node, Mapping) or not node.get("label") or not node.get("key"):
        raise TableInputError(f"table.columns[{index}] must be a mapping with label and key, got {node!r}")
    return Column(label=str(node["label"]), key=str(node["key"]), percent=bool(node.get("percent", False)))


def _published(node: Any, index: int, labels: set[str]) -> Published:
    where = f"table.published[{index}]"
    if not isinstance(node, Mapping) or not node.get("row") or not node.get("source"):
        raise TableInputError(f"{where} needs row, values and source (a citation), got {node!r}")
    values = node.get("values") or {}
    unknown = sorted(set(values) - labels)
    if unknown:
        raise TableInputError(f"{where}.values: {unknown} are not column labels {sorted(labels)}")
    numbers, texts = {}, {}
    for label, value in values.items():
        numbers[str(label)], texts[str(label)] = _published_number(value, f"{where}.values.{label}")
    return Published(
        row=str(node["row"]),
        values=numbers,
        source=str(node["source"]),
        setup=str(node.get("setup") or ""),
        series=node.get("series"),
        texts=texts,
    )


def _published_number(value: Any, where: str) -> tuple[float, str]:
    """(number, text as printed): YAML reads 99.30 as 99.3, so sources' trailing zeros need quotes ("99.30")."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        text = value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        text = f"{number:.1f}" if number.is_integer() else f"{number:g}"
    else:
        number, text = math.nan, ""
    if not math.isfinite(number):
        raise TableInputError(f"{where} must be a number, got {value!r}")
    return number, text


@dataclass
class Cell:
    """The values of one row × series × column: one per included job."""

    values: list[float] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1) over the seeds; None below two values."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Exclusion:
    """A job (or one of its values) that is not in the table, and why."""

    job: str
    row: str
    series: str
    column: str  # a column label, or "all"
    reason: str


@dataclass
class Table:
    """The aggregated table.

    Attributes:
        spec: What was asked for.
        rows: Row values in display order.
        series: Series values in order (``[None]`` without a series).
        cells: ``(row, series, column label)`` → :class:`Cell`.
        exclusions: What was left out, with reasons.
        num_jobs: Jobs found in the multirun.
        source: The multirun directory.
        present: The ``(row, series)`` pairs that have at least one job, included or not.
    """

    spec: TableSpec
    rows: list[Any]
    series: list[Any]
    cells: dict[tuple[Any, Any, str], Cell]
    exclusions: list[Exclusion]
    num_jobs: int
    source: str
    present: set[tuple[Any, Any]] = field(default_factory=set)

    def cell(self, row: Any, series: Any, column: Column) -> Cell:
        return self.cells.get((row, series, column.label), Cell())

    @property
    def num_included(self) -> int:
        """Jobs that contributed at least one value."""
        return len({job for c in self.cells.values() for job in c.jobs})


def spec_from_jobs(jobs: Sequence[Job]) -> TableSpec:
    """The ``table:`` node shared by every job's config.

    Raises:
        TableInputError: No job has one, or the jobs disagree on it.
    """
    specs = {json.dumps(job.config.get("table"), sort_keys=True, default=str) for job in jobs}
    if len(specs) > 1:
        raise TableInputError(
            "the jobs' configs carry different `table:` entries (several sweeps in one directory?): make one table "
            "per sweep directory"
        )
    node = jobs[0].config.get("table")
    if not node:
        raise TableInputError(
            "the jobs' configs have no `table:` entry: run a paper config (python train.py paper=<name>), or pass "
            "--rows KEY and --column LABEL=KEY to scripts/make_table.py"
        )
    return TableSpec.from_mapping(node)


def _metric(metrics: Mapping[str, Any], column: Column) -> tuple[float | None, str | None]:
    """A job's value of one column, or None with the reason it cannot be averaged."""
    if column.key not in metrics:
        return None, f"{column.key} is not in metrics.json"
    value = metrics[column.key]
    if isinstance(value, str):
        reason = metrics.get(f"{column.key}_reason")
        return None, f"{column.key} is {value!r}" + (f": {reason}" if reason else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"{column.key} is not a finite number ({value!r})"
    return float(value) * (100.0 if column.percent else 1.0), None


def _ordered(values: Iterable[Any], preferred: Sequence[str] = ()) -> list[Any]:
    """Distinct values: those named in ``preferred`` first in that order, then numbers ascending, then the rest."""
    distinct = list(dict.fromkeys(values))
    first = [v for p in preferred for v in distinct if str(v) == p]
    rest = [v for v in distinct if v not in first]
    numbers = sorted(v for v in rest if isinstance(v, (int, float)) and not isinstance(v, bool))
    return first + numbers + [v for v in rest if v not in numbers]


def _check_single_setup(jobs: Sequence[Job], spec: TableSpec) -> None:
    """Jobs may differ only in the row, the series and the seed: anything else would be averaged together."""
    shown = {spec.rows_key, spec.series_key} | REPLICATE_KEYS
    keys = sorted({k for job in jobs for k in job.override_values} - shown)
    varying = {}
    for key in keys:
        values = {job.override_values.get(key, "<not set>") for job in jobs}
        if len(values) > 1:
            varying[key] = sorted(values)
    if varying:
        listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in varying.items())
        raise TableInputError(
            f"the jobs differ in overrides that are neither the rows ({spec.rows_key}) nor the series "
            f"({spec.series_key}) nor the seed, so they cannot be averaged together: {listed}"
        )


def build_table(jobs: Sequence[Job], spec: TableSpec, source: str = "") -> Table:
    """Aggregate the jobs' metrics into ``spec``'s table.

    Args:
        jobs: From :func:`facetrain.reporting.runs.load_multirun`.
        spec: The table description.
        source: The multirun directory, for the caption.

    Raises:
        TableInputError: The jobs used different evaluation protocols or setups, or lack the row/series key.
    """
    check_same_protocol(list(jobs))
    _check_single_setup(jobs, spec)
    cells: dict[tuple[Any, Any, str], Cell] = {}
    exclusions: list[Exclusion] = []
    seen: dict[tuple[Any, Any, Any], str] = {}
    rows, series = [], []
    for job in jobs:
        row = job.value(spec.rows_key)
        x = job.value(spec.series_key) if spec.series_key else None
        rows.append(row)
        series.append(x)
        label, x_text = spec.row_label(row), "" if x is None else spec.series_text(x)
        if job.metrics is None:
            reason = job.metrics_error or "no metrics.json (the job failed, was killed or is still running)"
            exclusions.append(Exclusion(job.name, label, x_text, "all", reason))
            continue
        replicate = (row, x, job.config.get("seed"))
        if replicate in seen:
            reason = f"same row and seed as job {seen[replicate]} (a rerun in the same directory); that one is used"
            exclusions.append(Exclusion(job.name, label, x_text, "all", reason))
            continue
        seen[replicate] = job.name
        for column in spec.columns:
            value, reason = _metric(job.metrics, column)
            if value is None:
                exclusions.append(Exclusion(job.name, label, x_text, column.label, str(reason)))
                continue
            cell = cells.setdefault((row, x, column.label), Cell())
            cell.values.append(value)
            cell.jobs.append(job.name)
    return Table(
        spec=spec,
        rows=_ordered(rows, list(spec.row_labels)),
        series=_ordered(series),
        cells=cells,
        exclusions=exclusions,
        num_jobs=len(jobs),
        source=source,
        present=set(zip(rows, series)),
    )
