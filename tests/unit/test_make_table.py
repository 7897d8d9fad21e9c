"""Paper tables from multirun directories (facetrain.reporting, scripts/make_table.py) and the shipped sweep configs.

The multirun directories are fabricated here in Hydra's layout (``<job>/.hydra/{config,overrides,hydra}.yaml`` and
``<job>/metrics.json``), so every case (failed job, undefined metric, mixed protocols) is exact and instant.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from facetrain.reporting import (
    NotAMultirunError,
    ProtocolMismatchError,
    TableInputError,
    TableSpec,
    build_table,
    load_multirun,
    make_table,
    spec_from_jobs,
)
from facetrain.reporting.render import to_csv, to_latex, to_markdown
from tests.conftest import CONFIGS, ROOT

TABLE: dict[str, Any] = {
    "name": "heads",
    "title": "Heads",
    "rows_key": "loss",
    "row_labels": {"softmax": "Softmax", "arcface": "ArcFace (m=0.5)"},
    "columns": [
        {"label": "LFW", "key": "lfw/acc", "percent": True},
        {"label": "Open-set", "key": "openset/dir@far=0.01,rank=1", "percent": True},
    ],
    "notes": ["A note."],
    "published": [
        {"row": "SphereFace (m=4)", "setup": "64-layer CNN", "values": {"LFW": 99.42}, "source": "CosFace Tab. 2 [S30]"}
    ],
}

EVAL: dict[str, Any] = {
    "lfw": {
        "_target_": "facetrain.callbacks.eval_sets.PairVerification",
        "root": "${synthetic.root}/lfw",
        "pairs_file": "${synthetic.root}/pairs.txt",
        "flip": "none",
        "batch_size": 128,
        "dirpath": "${paths.output_dir}",
    },
    "openset": {"_target_": "facetrain.callbacks.eval_sets.OpenSetIdentification", "trials": 10},
}


def _write_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    metrics: dict[str, Any] | None,
    seed: int,
    eval_cfg: dict[str, Any] | None = None,
    table: dict[str, Any] | None = None,
) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "paths": {"root_dir": "${hydra:runtime.cwd}", "output_dir": "${hydra:runtime.output_dir}"},
        "synthetic": {"root": "${paths.root_dir}/data/synthetic"},
        "eval": eval_cfg if eval_cfg is not None else EVAL,
        "table": table if table is not None else TABLE,
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # as Hydra: key order kept
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"runtime": {"cwd": "/project", "output_dir": str(job), "choices": {"loss": "cam_softmax"}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _metrics(lfw: float, dir_: float | str = 0.5, reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"lfw/acc": lfw, "openset/dir@far=0.01,rank=1": dir_, "lfw/flip": "none"}
    if reason:
        out["openset/dir@far=0.01,rank=1_reason"] = reason
    return out


@pytest.fixture
def heads_sweep(tmp_path: Path) -> Path:
    """ArcFace × 3 seeds (one DIR undefined), softmax × 2 seeds + one failed job, cam_softmax by default choice."""
    sweep = tmp_path / "multirun"
    lfw = {1: 0.90, 2: 0.92, 3: 0.94}
    for i, seed in enumerate((1, 2, 3)):
        dir_: float | str = "undefined" if seed == 3 else 0.40 + 0.02 * seed
        reason = "FAR=0.01 is below 1/60" if seed == 3 else None
        _write_job(sweep, i, ["+paper=heads", "loss=arcface", f"seed={seed}"], _metrics(lfw[seed], dir_, reason), seed)
    _write_job(sweep, 3, ["+paper=heads", "loss=softmax", "seed=1"], _metrics(0.80, 0.30), 1)
    _write_job(sweep, 4, ["+paper=heads", "loss=softmax", "seed=2"], {"lfw/acc": 0.82}, 2)  # no open-set key
    _write_job(sweep, 5, ["+paper=heads", "loss=softmax", "seed=3"], None, 3)  # failed: no metrics.json
    _write_job(sweep, 6, ["+paper=heads", "seed=1"], _metrics(0.85, 0.35), 1)  # loss from hydra's choices
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def _table(sweep: Path):
    jobs = load_multirun(sweep)
    return build_table(jobs, spec_from_jobs(jobs), source=str(sweep))


def test_mean_std_and_n_over_seeds(heads_sweep: Path) -> None:
    table = _table(heads_sweep)
    lfw, openset = table.spec.columns
    arcface = table.cell("arcface", None, lfw)
    assert arcface.n == 3
    assert arcface.mean == pytest.approx(92.0)
    assert arcface.std == pytest.approx(2.0)  # sample std (n - 1) of 90, 92, 94
    assert table.cell("arcface", None, openset).n == 2  # the undefined value is not averaged in
    assert table.cell("softmax", None, lfw).values == pytest.approx([80.0, 82.0])
    assert table.cell("cam_softmax", None, lfw).n == 1
    assert table.rows == ["softmax", "arcface", "cam_softmax"]  # row_labels order first, then the rest
    markdown = to_markdown(table)
    assert "| ArcFace (m=0.5) | ours | 92.00 ± 2.00 (n=3) | 43.00 ± 1.41 (n=2) |" in markdown
    assert "| cam_softmax | ours | 85.00 (n=1) | 35.00 (n=1) |" in markdown  # n=1: no std


def test_incomplete_and_undefined_are_listed_with_reasons(heads_sweep: Path) -> None:
    table = _table(heads_sweep)
    reasons = {(e.job, e.column): e.reason for e in table.exclusions}
    assert "no metrics.json" in reasons[("5", "all")]
    assert reasons[("4", "Open-set")] == "openset/dir@far=0.01,rank=1 is not in metrics.json"
    assert reasons[("2", "Open-set")] == "openset/dir@far=0.01,rank=1 is 'undefined': FAR=0.01 is below 1/60"
    assert len(table.exclusions) == 3
    not_included = to_markdown(table).split("### Not included")[1]
    assert "| 5 | Softmax | all | no metrics.json" in not_included
    assert "FAR=0.01 is below 1/60" in not_included
    assert "see heads.md" in to_latex(table)


def test_published_rows_are_marked_with_their_citation(heads_sweep: Path) -> None:
    table = _table(heads_sweep)
    markdown = to_markdown(table)
    assert "| SphereFace (m=4) | **published** | 99.42 | – | 64-layer CNN; CosFace Tab. 2 [S30] |" in markdown
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    published = [r for r in rows if r["kind"] == "published"]
    assert [(r["method"], r["LFW mean"], r["source"]) for r in published] == [
        ("SphereFace (m=4)", "99.42", "64-layer CNN; CosFace Tab. 2 [S30]")
    ]
    ours = {r["method"]: r for r in rows if r["kind"] == "ours"}
    assert (ours["ArcFace (m=0.5)"]["LFW mean"], ours["ArcFace (m=0.5)"]["LFW n"]) == ("92", "3")
    latex = to_latex(table)
    assert "\\emph{Published}" in latex and "\\emph{SphereFace (m=4)}\\textsuperscript{1} & published & 99.42" in latex
    assert "CosFace Tab. 2 [S30]" in latex and "92.00 $\\pm$ 2.00 (n=3)" in latex


def test_cli_writes_markdown_csv_latex_and_png(heads_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    assert _cli()([str(heads_sweep), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"heads.md", "heads.csv", "heads.tex", "heads.png"}
    assert (out / "heads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_different_protocols_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "mixed"
    other = {**EVAL, "lfw": {**EVAL["lfw"], "pairs_file": "/data/other_pairs.txt"}}
    _write_job(sweep, 0, ["loss=arcface", "seed=1"], _metrics(0.9), 1)
    _write_job(sweep, 1, ["loss=softmax", "seed=1"], _metrics(0.8), 1, eval_cfg=other)
    with pytest.raises(ProtocolMismatchError, match=r"eval\.lfw\.pairs_file"):
        _table(sweep)
    assert _cli()([str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "different protocols" in err and "/project/data/synthetic/pairs.txt" in err  # resolved, with hydra's cwd
    assert "/data/other_pairs.txt" in err
    assert not (tmp_path / "out").exists()


def test_speed_settings_are_not_part_of_the_protocol(tmp_path: Path) -> None:
    sweep = tmp_path / "speed"
    faster = {**EVAL, "lfw": {**EVAL["lfw"], "batch_size": 512}}
    _write_job(sweep, 0, ["loss=arcface", "seed=1"], _metrics(0.9), 1)
    _write_job(sweep, 1, ["loss=arcface", "seed=2"], _metrics(0.8), 2, eval_cfg=faster)
    assert _table(sweep).cell("arcface", None, TableSpec.from_mapping(TABLE).columns[0]).n == 2


def test_a_missing_eval_set_is_a_protocol_difference(tmp_path: Path) -> None:
    sweep = tmp_path / "sets"
    _write_job(sweep, 0, ["loss=arcface", "seed=1"], _metrics(0.9), 1)
    _write_job(sweep, 1, ["loss=arcface", "seed=2"], _metrics(0.8), 2, eval_cfg={"lfw": EVAL["lfw"]})
    with pytest.raises(ProtocolMismatchError, match="eval.openset"):
        _table(sweep)


def test_not_a_multirun_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(NotAMultirunError, match="not a Hydra multirun directory"):
        load_multirun(empty)
    single = _write_job(tmp_path / "runs", 0, [], _metrics(0.9), 1)  # a single run's directory
    assert _cli()([str(single)]) == 2
    assert "single run" in capsys.readouterr().err
    assert _cli()([str(tmp_path / "missing")]) == 2


def test_jobs_differing_beyond_rows_and_seeds_are_refused(tmp_path: Path) -> None:
    sweep = tmp_path / "lr"
    _write_job(sweep, 0, ["loss=arcface", "optimizer.lr=0.1", "seed=1"], _metrics(0.9), 1)
    _write_job(sweep, 1, ["loss=arcface", "optimizer.lr=0.01", "seed=1"], _metrics(0.8), 1)
    with pytest.raises(TableInputError, match=r"optimizer\.lr: 0\.01, 0\.1"):
        _table(sweep)


def test_a_rerun_with_the_same_seed_is_not_counted_twice(tmp_path: Path) -> None:
    sweep = tmp_path / "dup"
    _write_job(sweep, 0, ["loss=arcface", "seed=1"], _metrics(0.9), 1)
    _write_job(sweep, 1, ["loss=arcface", "seed=1"], _metrics(0.7), 1)
    table = _table(sweep)
    assert table.cell("arcface", None, table.spec.columns[0]).values == [90.0]
    assert "same row and seed as job 0" in table.exclusions[0].reason


def test_series_table_pivot_published_series_and_lines_figure(tmp_path: Path) -> None:
    spec = {
        **TABLE,
        "name": "noise",
        "series_key": "data.label_noise.rate",
        "series_label": "Label noise",
        "series_percent": True,
        "published": [
            {"row": "ArcFace", "series": 0.0, "values": {"LFW": 97.95}, "source": "NoiseFace [S34]"},
            {"row": "ArcFace", "series": 0.6, "values": {"LFW": 84.05}, "source": "NoiseFace [S34]"},
        ],
    }
    sweep = tmp_path / "noise"
    num = 0
    for loss in ("arcface", "cam_softmax"):
        for rate in (0.0, 0.2):
            for seed in (1, 2):
                acc = 0.9 - rate / 2 + 0.01 * seed
                overrides = [f"loss={loss}", f"data.label_noise.rate={rate}", f"seed={seed}"]
                _write_job(sweep, num, overrides, _metrics(acc), seed, table=spec)
                num += 1
    table, paths = make_table(sweep, tmp_path / "out")
    lfw = table.spec.columns[0]
    assert table.series == [0.0, 0.2]
    assert table.cell("cam_softmax", 0.2, lfw).mean == pytest.approx(81.5)
    markdown = paths["md"].read_text()
    assert "### LFW by label noise" in markdown
    assert "| Method | Result | 0% | 20% | 60% |" in markdown  # 60%: only the published row has it
    assert "| ArcFace | **published** | 97.95 | – | 84.05 |" in markdown
    assert "| ArcFace (m=0.5) | 20% | ours | 81.50 ± 0.71 (n=2) |" in markdown
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["data.label_noise.rate"] for r in rows if r["kind"] == "ours"] == ["0.0", "0.0", "0.2", "0.2"]
    assert paths["png"].stat().st_size > 1000


def test_rows_and_columns_from_the_command_line(tmp_path: Path) -> None:
    sweep = tmp_path / "plain"
    _write_job(sweep, 0, ["loss=arcface", "seed=1"], _metrics(0.9), 1, table={})
    _write_job(sweep, 1, ["loss=softmax", "seed=1"], _metrics(0.8), 1, table={})
    with pytest.raises(TableInputError, match="no `table:` entry"):
        _table(sweep)
    out = tmp_path / "out"
    assert _cli()([str(sweep), "--out", str(out), "--rows", "loss", "--column", "LFW=lfw/acc"]) == 0
    assert "| arcface | ours | 90.00 (n=1) | this multirun |" in (out / "plain.md").read_text()


def test_bad_table_entries_name_the_key() -> None:
    with pytest.raises(TableInputError, match="table.columns"):
        TableSpec.from_mapping({**TABLE, "columns": [{"label": "LFW"}]})
    with pytest.raises(TableInputError, match=r"table.published\[0\]"):
        TableSpec.from_mapping({**TABLE, "published": [{"row": "x", "values": {"LFW": 99.0}}]})  # no source
    with pytest.raises(TableInputError, match="not column labels"):
        TableSpec.from_mapping({**TABLE, "published": [{"row": "x", "values": {"YTF": 9.0}, "source": "s"}]})
    with pytest.raises(TableInputError, match=r"values.LFW must be a number"):
        TableSpec.from_mapping({**TABLE, "published": [{"row": "x", "values": {"LFW": "n/a"}, "source": "s"}]})
    quoted = TableSpec.from_mapping({**TABLE, "published": [{"row": "x", "values": {"LFW": "99.30"}, "source": "s"}]})
    assert (quoted.published[0].values["LFW"], quoted.published[0].texts["LFW"]) == (99.3, "99.30")
    with pytest.raises(TableInputError, match="unknown key"):
        TableSpec.from_mapping({**TABLE, "colums": []})


def _cli() -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location("make_table_script", ROOT / "scripts" / "make_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# --- the shipped sweep configs --------------------------------------------------------------------------------------


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture
def compose_hydra(tmp_path: Path):
    """Compose ``train.yaml`` including the ``hydra`` node (sweeper, launcher, mode)."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("train", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("paper", _options("paper"))
def test_every_paper_config_is_a_sweep_with_a_valid_table(compose_hydra, paper: str) -> None:
    cfg = compose_hydra(f"paper={paper}")
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    spec = TableSpec.from_mapping(OmegaConf.to_container(cfg.table, resolve=True))
    assert spec.name == paper  # outputs and the sweep directory are named after the config
    assert spec.rows_key in params and "seed" in params
    assert spec.series_key is None or spec.series_key in params
    for row in str(params[spec.rows_key]).split(","):
        assert (CONFIGS / "loss" / f"{row}.yaml").is_file(), row
    assert {"lfw", "ytf", "openset"} <= set(cfg.eval)
    assert spec.published, "published reference rows"


def test_hparams_search_optuna_configs_compose(compose_hydra) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed: pip install -e '.[optuna]'"
    )
    expected = {
        "camsoftmax_optuna": {"loss.c_policy.stop", "loss.scale"},
        "arcface_optuna": {"loss.margin", "loss.scale"},
    }
    assert set(_options("hparams_search")) == set(expected)
    for name, keys in expected.items():
        cfg = compose_hydra(f"hparams_search={name}")
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.hydra.sweeper.direction == "maximize"
        assert cfg.optimized_metric == "lfw/acc"
        assert set(cfg.hydra.sweeper.params) == keys
        for key in keys:  # every searched key exists in the composed config (a typo would add a dead key)
            assert OmegaConf.select(cfg, key) is not None, key


def test_slurm_launcher_config_composes(compose_hydra) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="hydra-submitit-launcher not installed: pip install -e '.[slurm]'",
    )
    cfg = compose_hydra("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4  # one task per GPU
    assert launcher.max_num_timeout > 0  # requeued on timeout
