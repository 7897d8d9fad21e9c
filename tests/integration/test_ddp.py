"""Two-process CPU DDP (gloo): training runs (with a Partial FC classifier), and the sharded evaluation equals a
single-process evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from facetrain.utils.instantiate import instantiate
from tests.conftest import run_train

pytestmark = [pytest.mark.slow, pytest.mark.ddp]


def test_ddp_two_cpu_processes_match_single_process_eval(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_train(
        "experiment=smoke",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        # An odd image count per set makes the distributed shards unequal, so padding must be removed again.
        "synthetic.lfw_pairs_per_fold=5",
        # A Partial FC classifier over 21 classes: unequal blocks (11 + 10) whose per-rank momentum buffers must not be
        # broadcast with the backbone's BatchNorm statistics before an evaluation (a gloo size mismatch, or worse).
        "classifier=partial_fc",
        "classifier.sample_rate=0.5",
        "synthetic.num_train_ids=21",
        # IJB-C-format templates too (raw-norm embeddings gathered across ranks), on a tiny companion set.
        "eval=[lfw,ytf,ijbc]",
        "synthetic.ijbc.num_ids=8",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert ddp_metrics["lfw/pairs"] > 0 and "ijbc/tar@far=0.01" in ddp_metrics

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    cfg = OmegaConf.create(ckpt["facetrain_config"])
    model = instantiate(cfg.model, num_classes=ckpt["state_dict"]["head.weight"].shape[0])
    model.load_state_dict(ckpt["state_dict"])
    n_images = {}
    for name in ("lfw", "ytf", "ijbc"):
        callback = instantiate(cfg.eval[name])
        single = callback.evaluate(model)
        n_images[name] = len(callback.paths)
        for key, value in single.items():
            assert ddp_metrics[key] == pytest.approx(value, abs=1e-6), key
    # At least one set has an odd image count, so one rank's shard was padded for the gather.
    assert any(n % 2 == 1 for n in n_images.values()), n_images
