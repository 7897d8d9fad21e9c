"""End to end: train the smoke experiment, export it, use it from the command line, evaluate the export, fine-tune it.

Each step runs the real entry point in a subprocess (train.py, export.py, facetrain-export, facetrain-verify,
facetrain-embed, evaluate.py), as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_script, run_train

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _console(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke training run (resnet18, 20 identities, 1 epoch); its run directory."""
    tmp = tmp_path_factory.mktemp("e2e")
    run_dir = tmp / "train"
    proc = run_train("experiment=smoke", f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}", "logger=none")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_export_verify_embed_and_evaluate_the_export(trained: Path) -> None:
    tmp, ckpt = trained.parent, trained / "checkpoints" / "last.ckpt"
    data = f"paths.data_dir={tmp / 'data'}"
    stored = torch.load(ckpt, weights_only=True)["facetrain_contract"]
    assert stored["thresholds"]["eval_set"] == "lfw" and stored["input"]["size"] == [112, 112]

    proc = run_script("export.py", f"ckpt_path={ckpt}", "experiment=smoke", data, f"hydra.run.dir={tmp / 'onnx'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    contract = json.loads((tmp / "onnx" / "facetrain.json").read_text())
    assert (
        contract["export"]["parity"]["max_abs_diff"] <= 1e-4 and "eval set lfw" in contract["export"]["parity"]["faces"]
    )
    assert contract["export"]["opset"] >= 17 and contract["thresholds"] == stored["thresholds"]
    proc = _console("facetrain-export", f"ckpt_path={ckpt}", "format=torchscript", "experiment=smoke", data,
                    f"hydra.run.dir={tmp / 'ts'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp / "ts" / "model.pt").is_file()

    lfw = tmp / "data" / "synthetic_smoke" / "lfw"
    name = sorted(p.name for p in lfw.iterdir())[0]
    first, second = sorted((lfw / name).iterdir())[:2]
    proc = _console("facetrain-verify", str(first), str(second), "--model", str(tmp / "onnx"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    threshold = stored["thresholds"]["accuracy_optimal"]
    assert f"threshold {threshold:.4f} (stored, from lfw)" in proc.stdout
    assert (
        proc.stdout.split()[1]
        == _console("facetrain-verify", str(first), str(second), "--model", str(ckpt)).stdout.split()[1]
    )

    out = tmp / "emb" / "lfw.npy"
    proc = _console("facetrain-embed", str(lfw), "--model", str(tmp / "onnx" / "model.onnx"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    emb = np.load(out)
    rows = out.with_suffix(".csv").read_text().splitlines()[1:]
    assert emb.shape == (len(rows), 64) == (120, 64)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    metrics = {}
    for key, value in (("ckpt_path", ckpt), ("model_path", tmp / "onnx" / "model.onnx")):
        run_dir = tmp / f"eval_{key}"
        proc = run_script("evaluate.py", f"{key}={value}", "experiment=smoke", data, f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-4000:]
        metrics[key] = json.loads((run_dir / "metrics.json").read_text())
    assert abs(metrics["model_path"]["lfw/acc"] - metrics["ckpt_path"]["lfw/acc"]) <= 0.001
    assert abs(metrics["model_path"]["ytf/acc"] - metrics["ckpt_path"]["ytf/acc"]) <= 0.001
    assert (
        metrics["model_path"]["format"] == "onnx"
        and metrics["model_path"]["global_step"] == stored["model"]["global_step"]
    )


def test_finetune_on_a_disjoint_set_with_another_class_count(trained: Path) -> None:
    tmp, ckpt = trained.parent, trained / "checkpoints" / "last.ckpt"
    run_dir = tmp / "finetune"
    proc = run_train(
        "experiment=smoke",
        f"paths.data_dir={tmp / 'data'}",
        "synthetic.root=${paths.data_dir}/synthetic_finetune",  # another generated set: other identities
        "synthetic.seed=1",
        "synthetic.num_train_ids=12",
        f"model.init_from={ckpt}",
        "model.trainable_stages=1",
        f"hydra.run.dir={run_dir}",
        "logger=none",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((run_dir / "init_from.json").read_text())
    assert record["init_from"] == str(ckpt.resolve()) and record["backbone"]["loaded"]
    assert record["classifier"]["loaded"] is False and "[20, 64]" in record["classifier"]["reason"]
    assert record["frozen"]["trainable_stages"] == ["layer4"]
    source = torch.load(ckpt, weights_only=True)["state_dict"]
    tuned = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert tuned["head.weight"].shape == (12, 64)
    frozen = [k for k in source if k.startswith("backbone.trunk.") and not k.startswith("backbone.trunk.layer4.")]
    assert frozen and all(torch.equal(tuned[k], source[k]) for k in frozen)  # weights and BatchNorm statistics
    assert not torch.equal(
        tuned["backbone.trunk.layer4.1.conv2.weight"], source["backbone.trunk.layer4.1.conv2.weight"]
    )
