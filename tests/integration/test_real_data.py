"""Real data through train.py and evaluate.py: a tiny tree in the documented layout under paths.data_dir.

The tree is written in the real formats (identity folders of aligned JPEGs, ``lfw/`` + ``pairs.txt`` with its
header, ``ytf/aligned_images_DB`` + ``splits.txt``) by the synthetic generator, then moved out of the synthetic root
into the layout of data/README.md § Layout, so the run reads it as real data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from facetrain.data.synthetic import SyntheticFaces
from tests.conftest import CONFIGS, run_script, run_train

pytestmark = pytest.mark.slow

# The smoke set's sizes (configs/experiment/smoke.yaml), written in the real layout.
TINY = {
    k: v
    for k, v in yaml.safe_load((CONFIGS / "experiment" / "smoke.yaml").read_text())["synthetic"].items()
    if k != "root"
}
# Small and fast, on the real-data preset; experiment=smoke only for its trainer and batch sizes.
FAST = ["experiment=smoke", "data=casia_webface", "data.batch_size=16", "data.num_workers=0", "logger=none"]


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/data`` holding CASIA-WebFace/, lfw/ (+ pairs.txt) and ytf/ (aligned_images_DB/ + splits.txt)."""
    tmp = tmp_path_factory.mktemp("real")
    made = SyntheticFaces(root=tmp / "made", **TINY).ensure()
    data = tmp / "data"
    data.mkdir()
    shutil.move(made.train_root, data / "CASIA-WebFace")
    shutil.move(made.lfw_root, data / "lfw")
    shutil.move(made.lfw_pairs, data / "lfw" / "pairs.txt")
    (data / "ytf").mkdir()
    shutil.move(made.ytf_root, data / "ytf" / "aligned_images_DB")
    shutil.move(made.ytf_splits, data / "ytf" / "splits.txt")
    shutil.rmtree(tmp / "made")
    assert (data / "lfw" / "pairs.txt").read_text().startswith("10\t4")  # LFW's header: folds, pairs per fold
    return data


def test_real_tree_trains_and_evaluates(real_tree: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_train(*FAST, f"paths.data_dir={real_tree}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["lfw/acc"] <= 1.0 and 0.0 <= metrics["ytf/acc"] <= 1.0
    assert metrics["num_classes"] == 20  # sphereface3's ids are not in this tree: nothing removed
    record = json.loads((run_dir / "data_exclusions.json").read_text())
    assert record["source"]["train_root"] == str(real_tree / "CASIA-WebFace")
    stored = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    evals = stored["facetrain_config"]["eval"]  # the resolved config the run used
    assert evals["lfw"]["pairs_file"] == str(real_tree / "lfw" / "pairs.txt") and evals["lfw"]["source"] is None
    assert evals["ytf"]["root"] == str(real_tree / "ytf" / "aligned_images_DB") and evals["ytf"]["source"] is None
    assert not any(p.name.startswith("synthetic") for p in real_tree.iterdir())  # nothing generated or read there

    # The standalone evaluation of the same checkpoint on the same real sets (world=real for evaluate.py).
    eval_dir = tmp_path / "eval"
    proc = run_script(
        "evaluate.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "world=real",
        "eval=[lfw,ytf]",
        f"paths.data_dir={real_tree}",
        f"hydra.run.dir={eval_dir}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    for key in ("lfw/acc", "ytf/acc"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_one_key_moves_one_dataset(real_tree: Path, tmp_path: Path) -> None:
    """paths.lfw elsewhere: the run reads it there (and refuses when it is not)."""
    elsewhere = tmp_path / "elsewhere" / "lfw-112x112"
    proc = run_train(*FAST, f"paths.data_dir={real_tree}", f"paths.lfw={elsewhere}", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode != 0
    assert f"eval.lfw.root='{elsewhere}'" in proc.stderr and "data/README.md § LFW" in proc.stderr
    assert f"paths.lfw='{elsewhere}'" in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_real_root_and_mixed_worlds_stop_before_training(tmp_path: Path) -> None:
    empty = tmp_path / "data"
    proc = run_train(*FAST, f"paths.data_dir={empty}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert f"data.train_root='{empty}/CASIA-WebFace' does not exist" in proc.stderr
    assert "data/README.md § CASIA-WebFace" in proc.stderr and "data/README.md § YouTube Faces" in proc.stderr
    # Synthetic training with the real evaluation sets: refused, nothing generated.
    proc = run_train("experiment=smoke", "world=real", f"paths.data_dir={empty}", f"hydra.run.dir={tmp_path / 'r2'}")
    assert proc.returncode != 0
    assert "mixes synthetic and real datasets" in proc.stderr and "allow_mixed_data=true" in proc.stderr
    assert not empty.exists() and not (tmp_path / "run" / "checkpoints").exists()
