"""Reused worker batch buffers in a real fit: ``train.py`` with uint8 batches and 2 workers trains bit-identically
whether the workers reuse their shared-memory buffers (``data.worker_buffers=4``, the default) or create a new
segment per batch (``0``). A batch overwritten while Lightning still held it (the step's batch or its look-ahead)
would change the recorded images and the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_train

pytestmark = pytest.mark.slow


def _fit(tmp: Path, name: str, buffers: int) -> Path:
    run = tmp / "runs" / name
    proc = run_train(
        "experiment=smoke",
        f"paths.data_dir={tmp / 'data'}",
        f"paths.log_dir={tmp / 'logs'}",
        f"hydra.run.dir={run}",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "data.num_workers=2",
        "data.uint8_batches=true",
        f"data.worker_buffers={buffers}",
        "eval=[lfw]",
        "logger=none",
        "+callbacks.record._target_=tests.faults.RecordSamples",
        f"+callbacks.record.path={tmp / name}.samples",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


def test_reused_buffers_train_bit_identically(tmp_path: Path) -> None:
    reused, fresh = _fit(tmp_path, "reused", 4), _fit(tmp_path, "fresh", 0)
    samples = (tmp_path / "reused.samples").read_text()
    assert samples.count("\n") == 14  # 7 steps x 2 epochs, every batch recorded
    assert samples == (tmp_path / "fresh.samples").read_text()
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (reused, fresh))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
