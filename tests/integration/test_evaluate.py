"""Standalone evaluation: train the smoke experiment once, then evaluate.py on its checkpoint in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from facetrain.tasks.evaluate import evaluate
from tests.conftest import CONFIGS, ROOT, run_script, run_train

pytestmark = pytest.mark.slow


def run_evaluate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python evaluate.py <args>`` and return the finished process (output captured as text)."""
    return run_script("evaluate.py", *args, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke training run (resnet18, 1 epoch, no logger); its directory."""
    tmp = tmp_path_factory.mktemp("evaluate")
    run_dir = tmp / "train"
    proc = run_train("experiment=smoke", f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}", "logger=none")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_evaluate_reproduces_the_training_evaluation(trained: Path) -> None:
    eval_dir = trained.parent / "eval"
    proc = run_evaluate(
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        "experiment=smoke",
        f"paths.data_dir={trained.parent / 'data'}",
        f"hydra.run.dir={eval_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    # The final evaluation in training and the standalone one embed the same weights with the same data.
    for key in ("lfw/acc", "lfw/auc", "ytf/acc"):
        assert metrics[key] == pytest.approx(trained_metrics[key], abs=1e-6), key
    # Options, undefined metrics with reasons, and the open-set protocol are recorded.
    assert (
        metrics["lfw/flip"] == "none" and metrics["lfw/score"] == "cosine" and metrics["lfw/mean_subtraction"] is False
    )
    assert metrics["ytf/aggregate"] == "mean_embedding"
    assert metrics["lfw/tar@far=0.0001"] == "undefined" and "1/40" in metrics["lfw/tar@far=0.0001_reason"]
    assert metrics["openset/protocol"] == "generic" and 0.0 <= metrics["openset/rank1"] <= 1.0
    assert metrics["global_step"] == trained_metrics["global_step"]
    assert metrics["ckpt_path"].endswith("last.ckpt")
    assert not list(eval_dir.glob(".metrics.json.*"))  # the atomic write left no temporary file
    curves = {p.name for p in (eval_dir / "curves").iterdir()}
    assert {"lfw_roc.csv", "lfw_scores.png", "ytf_roc.png", "openset_dir_far.csv"} <= curves
    assert {"lfw_roc.csv", "ytf_roc.csv"} <= {p.name for p in (trained / "curves").iterdir()}  # written in training

    spec = importlib.util.spec_from_file_location("plot_roc", ROOT / "scripts" / "plot_roc.py")
    plot_roc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_roc)
    out = trained.parent / "roc.png"
    assert plot_roc.main([str(trained), str(eval_dir), "--set", "lfw", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_evaluate_config_and_bad_checkpoint(tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(
                "evaluate",
                overrides=[
                    f"paths.root_dir={tmp_path}",
                    f"paths.output_dir={tmp_path / 'run'}",
                    f"ckpt_path={tmp_path / 'missing.ckpt'}",
                    "experiment=smoke",
                ],
            )
    finally:
        GlobalHydra.instance().clear()
    assert sorted(cfg.eval) == ["lfw", "openset", "ytf"]
    assert cfg.eval.lfw.fars == [1e-4, 1e-3, 1e-2] and cfg.eval.lfw.flip == "none"
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        evaluate(cfg)
