"""Fault test on 2 processes with Partial FC: the whole job killed with SIGKILL mid-epoch, resumed with
``ckpt_path=last``, compared with an uninterrupted run of the same seed (issue 15, "Proof").

Each run is ``train.py experiment=smoke trainer=ddp`` on 2 gloo CPU processes with ``classifier=partial_fc
classifier.sample_rate=0.5`` and 64 identities: each rank's block of 32 classes keeps 16 per step, its positives plus
negatives drawn from its own seeded generator (the global batch of 16 images holds at most 16 classes, so a block
draws negatives unless all of them are distinct classes of that block). The checkpoint must carry everything that
decides the next steps of every rank: the sampler position, each rank's Partial FC generator (rank 1's stream is not
rank 0's), the full class matrix and the Partial FC momentum of both blocks (rank 0 writes the file), the SGD
momentum, the global RNG (dropout 0.4 draws from it every step). As in ``test_resume.py``: 2 epochs (8 steps each), a
step checkpoint every 3 steps, a loader worker per rank, :class:`tests.faults.RecordSamples` (one file per rank); a
tiny backbone and world, since what is tested is what the checkpoint carries.

The kill is a node crash: ``SignalAt(whole_job=True)`` sends SIGKILL to the job's process group, so both ranks and
their loader workers die at once, with no chance to write anything or to wait for a peer (as when a node loses power,
or the scheduler kills the job). One syscall, no peer pids to exchange, and whichever rank starts the kill step first
does it. Killing one rank alone is not a crash a run can resume from by itself: its peer blocks in the next
collective until gloo's timeout, until a scheduler kills it. ``train.py`` runs as a :class:`tests.faults.TrainJob`,
in a session of its own as under a scheduler, so that the group is exactly the job; the runner kills whatever is left
of the group when ``train.py`` exits, times out, or the test fails, and the test asserts nothing was left.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.faults import (
    JOB_ENV,
    RUNS,
    SAMPLES_ENV,
    SignalAt,
    TrainJob,
    compare_resumed,
    fault_run_overrides,
    group_processes,
    read_samples,
    samples_path,
)

# The job runner finds a job's processes in /proc and kills them by process group.
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")

WORLD = 2
STEPS_PER_EPOCH = 8  # 128 images / (2 ranks x 8)
KILL_STEP = 10  # epoch 2, after the step-9 checkpoint: step 9 is lost and redone


def _args(tmp: Path, name: str, *extra: str, data: str = "data") -> list[str]:
    return [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        f"trainer.devices={WORLD}",
        "classifier=partial_fc",
        "classifier.sample_rate=0.5",
        "synthetic.num_train_ids=64",
        "synthetic.images_per_train_id=2",
        # A tiny world and backbone: the test is about what the checkpoint carries, not about the model.
        "synthetic.image_size=32",
        "synthetic.num_lfw_ids=20",
        "synthetic.images_per_lfw_id=2",
        "synthetic.lfw_pairs_per_fold=1",
        "synthetic.num_ytf_ids=20",
        "synthetic.frames_per_video=1",
        "synthetic.ytf_pairs_per_split=1",
        "backbone.model_name=test_resnet",
        "backbone.input_size=32",
        "backbone.embedding_size=16",
        "data.batch_size=8",
        f"paths.data_dir={tmp / data}",
        *fault_run_overrides(tmp, tmp / RUNS / name, workers=1),
        *extra,
    ]


def _job(tmp: Path, name: str, *extra: str, data: str = "data") -> TrainJob:
    return TrainJob(*_args(tmp, name, *extra, data=data), env={SAMPLES_ENV: str(samples_path(tmp, name))})


@pytest.mark.slow
@pytest.mark.ddp
def test_whole_job_killed_then_resumed_is_bit_identical(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = tmp_path
    fault = [
        "+callbacks.fault._target_=tests.faults.SignalAt",
        f"+callbacks.fault.step={KILL_STEP}",
        "+callbacks.fault.whole_job=true",
    ]
    # The reference runs beside the killed run and the resumed one: most of a job's time is its two processes
    # starting one after the other (imports), each using one core. It has a data directory of its own (generated
    # from the same seed: the same images), so that two jobs never write one; ckpt_path=last matches runs by their
    # overrides, so it never picks the reference.
    with _job(tmp, "uninterrupted", data="data_ref") as reference:
        with _job(tmp, "killed", *fault) as killed:
            proc = killed.wait()
        assert proc.returncode == -9, proc.stderr[-3000:]
        # The signal took the whole job: no process of it was left (a rank killed alone leaves its peer blocked in
        # the next collective), and neither rank got past the kill step. The first rank to start the kill step kills
        # the job; the other, at most one step behind (every step gathers the batch), may not have started it yet.
        assert proc.leftover == []
        last = [max(read_samples(samples_path(tmp, "killed", rank))) for rank in range(WORLD)]
        assert max(last) == KILL_STEP and min(last) >= KILL_STEP - 1, last
        assert not (tmp / RUNS / "killed" / "metrics.json").exists()

        with _job(tmp, "after_kill", *fault, "ckpt_path=last") as resumed:
            proc = resumed.wait()
        ref = reference.wait()
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert ref.leftover == [], "rank 1 of the uninterrupted run did not end with rank 0"
    for rank in range(WORLD):  # so the kill step is in the middle of epoch 2
        assert sorted(read_samples(samples_path(tmp, "uninterrupted", rank))) == list(range(2 * STEPS_PER_EPOCH))
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (tmp / RUNS / "after_kill" / "train.log").read_text()
    assert "ckpt_path=last: resuming from" in log and "killed/checkpoints/step0000009.ckpt" in log
    compare_resumed(tmp, "killed", "after_kill", resume_step=9, capsys=capsys, world_size=WORLD)


def test_a_job_leaves_no_process_behind(tmp_path: Path) -> None:
    """The runner's guarantee: a process of the job that outlives rank 0 (as a rank blocked in a collective would) is
    reported and killed."""
    script = tmp_path / "orphan.py"
    sleeper = "[sys.executable, '-c', 'import time; time.sleep(600)']"
    script.write_text(f"import subprocess, sys\nprint(subprocess.Popen({sleeper}).pid)\n")
    with TrainJob(script=str(script)) as job:
        done = job.wait(timeout=60, grace=0.3)
    assert done.returncode == 0, done.stderr
    assert done.leftover == [int(done.stdout)]
    assert group_processes(job.proc.pid) == []


def test_whole_job_signal_refuses_a_process_group_it_does_not_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a :class:`TrainJob` (no job environment, or not the session's own group), killing the process group
    would kill the caller: refused. Inside one, the job's group gets the signal."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda group, signum: sent.append((group, signum)))
    trainer = SimpleNamespace(global_step=3, ckpt_path=None)
    fault = SignalAt(step=3, whole_job=True)
    monkeypatch.delenv(JOB_ENV, raising=False)
    with pytest.raises(RuntimeError, match="job of its own"):
        fault.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    monkeypatch.setenv(JOB_ENV, "1")
    monkeypatch.setattr(os, "getpgid", lambda pid: 4242)
    monkeypatch.setattr(os, "getsid", lambda pid: 17)
    with pytest.raises(RuntimeError, match="job of its own"):
        fault.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    monkeypatch.setattr(os, "getsid", lambda pid: 4242)
    fault.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    fault.on_train_batch_start(SimpleNamespace(global_step=3, ckpt_path="x.ckpt"), None, None, 0)  # type: ignore[arg-type]
    assert sent == [(4242, signal.SIGKILL)]  # once: a resumed run (ckpt_path set) is not killed again
