"""End to end: ``python train.py experiment=smoke 'eval=[lfw,ijbc,tinyface]'`` in-process, on tiny synthetic
IJB-C- and TinyFace-format companion sets generated on first use (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facetrain.evaluation.plots import read_curve_csv
from facetrain.tasks.train import train

pytestmark = pytest.mark.slow


def test_smoke_run_evaluates_ijbc_and_tinyface(compose_cfg) -> None:  # noqa: ANN001
    cfg = compose_cfg(
        "experiment=smoke",
        "eval=[lfw,ijbc,tinyface]",
        "synthetic.ijbc.num_ids=8",
        "synthetic.ijbc.impostor_pairs=2000",
        "synthetic.tinyface.num_ids=10",
        "synthetic.tinyface.num_distractors=20",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    ijbc = ["tar@far=0.1", "tar@far=0.1/strict", "auc", "G1/rank1", "G2/rank5", "mean/rank1", "mean/tpir@fpir=0.1"]
    for key in [*(f"ijbc/{k}" for k in ijbc), "tinyface/rank1", "tinyface/rank20", "lfw/acc"]:
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    # 8 identities give a few hundred impostor pairs: FAR 1e-6 is undefined with its reason, never a number.
    assert metrics["ijbc/tar@far=1e-06"] == "undefined" and "ijbc/tar@far=1e-06_reason" in metrics
    assert metrics["ijbc/variant"] == "N1D1" and metrics["ijbc/flip"] == "sum"
    for kind in ["ijbc_roc", "ijbc_cmc", "tinyface_cmc"]:
        assert (run / "curves" / f"{kind}.png").stat().st_size > 0
        assert len(read_curve_csv(run / "curves" / f"{kind}.csv")["rank" if "cmc" in kind else "fpr"]) > 1
    embeddings = np.load(run / "embeddings" / "ijbc.npy")
    order = (run / "embeddings" / "ijbc.txt").read_text().splitlines()
    assert embeddings.shape == (len(order), 64) and order[0].endswith(".jpg")
    # N1D1 pools with the raw embedding norms: the file keeps them (not unit rows) for evaluate.py to recompute.
    assert not np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)
