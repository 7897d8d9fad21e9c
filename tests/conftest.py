"""Shared fixtures: composing the Hydra config the way train.py does, and running train.py in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

Composer = Callable[..., DictConfig]


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """Every test leaves os.environ and Lightning's global rank as it found them.

    Building a Trainer writes MASTER_ADDR / MASTER_PORT / ranks into os.environ and sets ``rank_zero_only.rank``. After
    a test that faked a SLURM task (global rank 6), a later test's train.py subprocess inherited MASTER_ADDR=node07 and
    hung in the DDP rendezvous, and every later in-process run skipped its rank-zero work (records, TensorBoard).
    """
    saved_env, saved_rank = dict(os.environ), getattr(rank_zero_only, "rank", 0)
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    rank_zero_only.rank = saved_rank


def _composer(tmp_path: Path) -> Composer:
    """Compose ``train.yaml`` with overrides; data and outputs go under ``tmp_path``."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose(
                "train",
                overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", *overrides],
            )

    return _compose


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Composer]:
    yield _composer(tmp_path)
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def compose_cfg_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Composer]:
    """Module-scoped variant of :func:`compose_cfg` for expensive module-level fixtures."""
    yield _composer(tmp_path_factory.mktemp("cfg"))
    GlobalHydra.instance().clear()


def run_script(
    script: str, *args: str, cwd: Path = ROOT, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` from the repository root and return the finished process (output as text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_train(
    *args: str, cwd: Path = ROOT, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python train.py <args>`` and return the finished process (output captured as text)."""
    return run_script("train.py", *args, cwd=cwd, timeout=timeout, env=env)


def bare_cpu_trainer(**kwargs: object) -> pl.Trainer:
    """A Lightning Trainer on the CPU with nothing around the loop (no logger, checkpoints, progress bar or model
    summary), for tests of the training module itself; keyword arguments are added or override."""
    settings: dict[str, object] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**settings, **kwargs})
