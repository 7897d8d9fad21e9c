"""End-to-end runs of train.py in a subprocess: a run, its outputs, resume, the multirun and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import CONFIGS, run_train

pytestmark = pytest.mark.slow

EXPECTED_KEYS = [
    "lfw/acc",
    "lfw/acc_std",
    "lfw/auc",
    "lfw/eer",
    "lfw/tar@far=0.001",
    "lfw/tar@far=0.01",
    "ytf/acc",
    "ytf/acc_std",
    "ytf/auc",
    "train/loss",
]


def _smoke(tmp: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"paths.data_dir={tmp / 'data'}", *extra]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("smoke")
    run_dir = tmp / "run"
    # The issue's own example command, on the tiny smoke set.
    proc = run_train(*_smoke(tmp, f"hydra.run.dir={run_dir}", "loss=cam_softmax", "backbone=resnet50"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_run_directory_contents(smoke_run: Path) -> None:
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in EXPECTED_KEYS:
        assert key in metrics, f"{key} missing from metrics.json: {sorted(metrics)}"
    assert 0.0 <= metrics["lfw/acc"] <= 1.0
    assert metrics["train/cam_c"] < 1.5707963267948966  # the linear schedule moved c
    assert (smoke_run / ".hydra" / "config.yaml").is_file()
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((smoke_run / "checkpoints").glob("epoch*-lfw*.ckpt"))) == 1  # best by LFW accuracy


def test_tensorboard_has_curves_and_roc_figures(smoke_run: Path) -> None:
    events = EventAccumulator(str(smoke_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = [
        "train/loss",
        "train/acc",
        "train/lr",
        "train/theta_target",
        "train/cam_c",
        "val/lfw/acc",
        "val/ytf/acc",
    ]
    for tag in expected:
        assert tag in scalars, f"{tag} not logged; have {sorted(scalars)}"
    images = set(events.Tags()["images"])
    assert {"val/lfw/roc", "val/ytf/roc"} <= images


def test_checkpoint_is_plain_data_and_resumes(smoke_run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["facetrain_config"]["loss"]["_target_"] == "facetrain.losses.CamSoftmaxHead"
    c_before = float(ckpt["state_dict"]["head.c"])
    steps_before = ckpt["global_step"]

    run_dir = tmp_path / "resumed"
    data_dir = smoke_run.parent / "data"
    proc = run_train(
        "experiment=smoke",
        f"paths.data_dir={data_dir}",
        "loss=cam_softmax",
        "backbone=resnet50",
        f"hydra.run.dir={run_dir}",
        f"ckpt_path={smoke_run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_epochs=2",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert resumed["global_step"] == 2 * steps_before
    # experiment=smoke anneals c over the first half of the run (loss/c_policy/linear.yaml run_fraction 0.5): the first
    # run of one epoch reached π/4 at its midpoint. The resumed run continues the step count and keeps the stored run
    # length (a resume does not stretch the schedule), so c stays at π/4.
    state, resumed_state = ckpt["state_dict"], resumed["state_dict"]
    assert int(state["head.step"]) == steps_before and int(state["head.total_steps"]) == steps_before
    assert c_before == pytest.approx(math.pi / 4, abs=1e-12)
    assert int(resumed_state["head.step"]) == 2 * steps_before
    assert int(resumed_state["head.total_steps"]) == steps_before
    assert float(resumed_state["head.c"]) == pytest.approx(math.pi / 4, abs=1e-12)


def test_multirun_every_head(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    # Every head through the sweep launcher: the wiring is the test, so the world and backbone are tiny.
    tiny = ["synthetic.image_size=32", "backbone.model_name=test_resnet", "backbone.input_size=32"]
    proc = run_train("-m", "loss=glob(*)", *_smoke(tmp_path, f"hydra.sweep.dir={sweep}", "logger=none", *tiny))
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    heads = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert "lfw/acc" in metrics and "ytf/acc" in metrics
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        heads.add(next(line for line in overrides.splitlines() if "loss=" in line).split("loss=")[1])
    assert heads == {p.stem for p in (CONFIGS / "loss").glob("*.yaml")}


@pytest.mark.parametrize(
    ("overrides", "expected", "before_data"),
    [
        (["data=casia_webface", "data.train_root=/nonexistent/casia"], "/nonexistent/casia", False),
        (["backbone.model_name=resnet51"], "resnet51", False),
        (["loss=arcface", "loss.margin=-0.2"], "loss.margin=-0.2 is invalid: it must be a number in [0, pi)", True),
        (["+trainer.max_epoch=2"], "did you mean trainer.max_epochs?", True),
        (["eval.lfw.pairs_file=PAIRS"], "Nobody_There", False),
        (["eval=[ytf]"], "optimized_metric='lfw/acc' names the set 'lfw'", True),
    ],
)
def test_bad_input_stops_before_training(
    tmp_path: Path, overrides: list[str], expected: str, before_data: bool
) -> None:
    if "eval.lfw.pairs_file=PAIRS" in overrides:
        pairs = tmp_path / "pairs.txt"
        lines = ["10\t1"] + ["Nobody_There\t1\t2", "Nobody_There\t1\tNobody_Else\t1"] * 10
        pairs.write_text("\n".join(lines) + "\n")
        overrides = [f"eval.lfw.pairs_file={pairs}"]
    proc = run_train(*_smoke(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", *overrides))
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
    if before_data:  # config errors are found before the synthetic set is generated
        assert not (tmp_path / "data").exists()
