"""The Optuna hyper-parameter search end to end: a 2-trial ``hparams_search=arcface_optuna`` sweep on the smoke set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_train


@pytest.mark.slow
def test_two_trial_optuna_search_maximises_lfw_accuracy(tmp_path: Path) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed: pip install -e '.[optuna]'"
    )
    sweep = tmp_path / "sweep"
    proc = run_train(
        "hparams_search=arcface_optuna",
        "experiment=smoke",
        "eval=[lfw]",
        "callbacks=none",
        "logger=none",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(trials) == 2
    margins = {yaml.safe_load((t / ".hydra" / "config.yaml").read_text())["loss"]["margin"] for t in trials}
    assert len(margins) == 2 and all(0.2 <= m <= 0.7 for m in margins)  # sampled from the search space
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {"loss.margin", "loss.scale"}
    assert 0.0 <= best["best_value"] <= 1.0
