"""Fault tests: kill -9 or SIGTERM mid-epoch, resume, and compare with an uninterrupted run of the same seed.

Each run is ``train.py experiment=smoke`` for 2 epochs with deterministic algorithms on CPU, 2 loader workers,
dropout 0.4 (so the model draws from the global RNG and its restore on resume is tested), a step checkpoint every 3
steps, and :class:`tests.faults.RecordSamples` writing a fingerprint of every training image
per step. The guarantees (issue "Training that survives"): no sample repeated or skipped, final weights and metrics
bit-identical to the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_train
from tests.faults import RUNS, SAMPLES_ENV, compare_resumed, fault_run_overrides, samples_path

pytestmark = pytest.mark.slow

KILL_STEP = 10  # epoch 2 (7 steps per epoch), after the step-9 checkpoint: steps 9 and 10 are lost and redone


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return [*fault_run_overrides(tmp, tmp / RUNS / name, workers=2), f"paths.data_dir={tmp / 'data'}", *extra]


def _train(tmp: Path, name: str, *extra: str):  # noqa: ANN202
    return run_train(*_args(tmp, name, *extra), env={SAMPLES_ENV: str(samples_path(tmp, name))})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    proc = _train(tmp, "uninterrupted")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp


def test_kill_9_then_resume_is_bit_identical(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = reference
    fault = ["+callbacks.fault._target_=tests.faults.SignalAt", f"+callbacks.fault.step={KILL_STEP}"]
    proc = _train(tmp, "killed", *fault)
    assert proc.returncode == -9, proc.stderr[-3000:]
    # Same command plus ckpt_path=last, in a new run directory: finds the killed run's newest good checkpoint.
    proc = _train(tmp, "after_kill", *fault, "ckpt_path=last")
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (tmp / RUNS / "after_kill" / "train.log").read_text()
    assert "ckpt_path=last: resuming from" in log and "killed/checkpoints/step0000009.ckpt" in log
    compare_resumed(tmp, "killed", "after_kill", resume_step=9, capsys=capsys)


def test_sigterm_writes_a_checkpoint_and_resumes_bit_identical(
    reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = reference
    fault = [
        "+callbacks.fault._target_=tests.faults.SignalAt",
        f"+callbacks.fault.step={KILL_STEP}",
        "+callbacks.fault.signal_name=TERM",
    ]
    proc = _train(tmp, "terminated", *fault)
    assert proc.returncode == 143, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "SIGTERM received: checkpoint written to" in output and "ckpt_path=last" in output
    assert "Traceback" not in output
    ckpt = tmp / RUNS / "terminated" / "checkpoints" / "preempted.ckpt"
    # Lightning finishes the batch in flight, then stops: the checkpoint is after step KILL_STEP.
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"] == KILL_STEP + 1
    assert not (tmp / RUNS / "terminated" / "metrics.json").exists()  # not a finished run
    proc = _train(tmp, "after_term", *fault, f"ckpt_path={ckpt}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    compare_resumed(tmp, "terminated", "after_term", resume_step=KILL_STEP + 1, capsys=capsys)
