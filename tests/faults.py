"""Fault injection for the fault tests: callbacks that ``train.py`` loads by ``_target_`` in a subprocess, a runner
that starts ``train.py`` as a job of its own, and the comparison of a resumed run with an uninterrupted one.

``train.py +callbacks.fault._target_=tests.faults.SignalAt +callbacks.fault.step=5 +callbacks.fault.signal_name=KILL``
kills (or terminates) the training process when the given optimizer step is about to start, after every callback of
the previous step (including checkpointing) has run; ``+callbacks.fault.whole_job=true`` kills every process of the
job instead (all DDP ranks and their loader workers: a node crash), which needs :class:`TrainJob`.
``RecordSamples`` writes one line per training batch with a fingerprint of each image, one file per rank, so two runs'
sample sequences can be compared (:func:`compare_resumed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch

if TYPE_CHECKING:  # train.py imports this module for its callbacks: no pytest in the training processes
    import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The run directories of the fault tests, under their ``tmp``: ``<RUNS>/<name>`` (``hydra.run.dir``).
RUNS = Path("logs") / "train" / "runs"

#: The environment variable that holds :class:`RecordSamples`' path, so that the resumed run's command (its overrides,
#: which ``ckpt_path=last`` matches) is the interrupted one's plus ``ckpt_path``.
SAMPLES_ENV = "FACETRAIN_SAMPLES"


def fault_run_overrides(tmp: Path, run_dir: Path, workers: int) -> list[str]:
    """The ``train.py`` overrides every fault test shares: 2 epochs of ``experiment=smoke``, deterministic, a step
    checkpoint every 3 steps, LFW at the end only, dropout (so the global RNG's restore is tested) and
    :class:`RecordSamples` writing to the file named by ``$FACETRAIN_SAMPLES``."""
    return [
        "experiment=smoke",
        f"paths.log_dir={tmp / 'logs'}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        f"data.num_workers={workers}",
        "eval=[lfw]",
        "logger=none",
        "callbacks.step_checkpoint.every_n_train_steps=3",
        "eval.lfw.every_n_epochs=2",
        # Dropout draws from the global torch RNG every step: without it (the smoke preset has dropout 0) nothing
        # would show a resume that forgets to restore the RNG state or lets the loader draw from the global RNG.
        "backbone.dropout=0.4",
        "+callbacks.record._target_=tests.faults.RecordSamples",
        # From the environment, so the resumed run's command (its overrides) is the interrupted one's + ckpt_path.
        f"+callbacks.record.path=${{oc.env:{SAMPLES_ENV}}}",
    ]


#: Set to 1 in the environment of a :class:`TrainJob`: the job is in a session of its own, so ``SignalAt(whole_job)``
#: may kill its process group.
JOB_ENV = "FACETRAIN_FAULT_JOB"

#: The checkpoint entries that must be bit-identical after an exact resume: the weights and buffers (a sharded
#: classifier's full matrix and Partial FC momentum included), the optimizer state (SGD momentum), the global RNG
#: states, and the sharded classifier's per-rank generator states. (Callback states hold run directories.)
EXACT_KEYS = ("state_dict", "optimizer_states", "facetrain_rng", "facetrain_classifier")


class SignalAt(pl.Callback):
    """Sends ``SIG<signal>`` at the start of optimizer step ``step`` (0-based global step).

    Args:
        step: The global step about to start when the signal is sent.
        signal_name: ``KILL``, ``TERM``, ...
        whole_job: False: to this process only. True: to its whole process group, i.e. every DDP rank and loader
            worker of a job started in a session of its own (:class:`TrainJob`, as a scheduler starts one), all
            at once, as a node crash or ``scancel --signal=KILL`` does. Whichever rank gets there first kills all.
    """

    def __init__(self, step: int, signal_name: str = "KILL", whole_job: bool = False) -> None:
        self.step = step
        self.signum = signal.Signals[f"SIG{signal_name}"]
        self.whole_job = whole_job

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        # Only in a fresh run: the resumed run is the same command plus ckpt_path=..., and must not die again.
        if trainer.global_step != self.step or trainer.ckpt_path is not None:
            return
        if not self.whole_job:
            os.kill(os.getpid(), self.signum)
            return
        group = os.getpgid(0)
        # Outside a TrainJob the group would be the caller's (pytest's, a shell's job): never kill that.
        if os.environ.get(JOB_ENV) != "1" or group != os.getsid(0):
            raise RuntimeError(
                f"SignalAt(whole_job=True) kills the process group ({group}): start train.py as a job of its own "
                f"(tests.faults.TrainJob sets {JOB_ENV}=1 and a new session)"
            )
        os.killpg(group, self.signum)


class RecordSamples(pl.Callback):
    """Appends ``<global step> <fingerprint> ...`` per training batch to ``path`` (one fingerprint per image).

    Args:
        path: The file; ``{rank}`` in it is replaced by the global rank, so that DDP ranks write their own files.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        images = batch[0].detach().to(torch.float64).flatten(1)
        weights = torch.arange(1, images.shape[1] + 1, dtype=torch.float64)
        prints = (images * weights).sum(1)  # position-weighted sum: distinct images give distinct values
        with Path(self.path.replace("{rank}", str(trainer.global_rank))).open("a") as f:
            f.write(f"{trainer.global_step} " + " ".join(f"{v:.6e}" for v in prints.tolist()) + "\n")
            f.flush()
            os.fsync(f.fileno())


def samples_path(tmp: Path, name: str, rank: int | None = None) -> Path:
    """Where run ``name`` records the samples of ``rank`` (None: the :class:`RecordSamples` path, ``{rank}`` in it)."""
    return tmp / f"{name}.rank{'{rank}' if rank is None else rank}.samples"


#: Environment variables of a distributed launch (Lightning, torchrun, SLURM) that a job must not inherit from the
#: process that starts it: a fresh job gets its own rendezvous (two jobs on one MASTER_PORT would join each other).
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrainJob:
    """``python <script> <args>`` (``train.py`` by default) started as a job of its own, as a scheduler starts one: a
    new session, so that its process group holds exactly its processes (the DDP ranks Lightning starts, their loader
    workers), and a rendezvous of its own (127.0.0.1, a free port), so that several jobs can run side by side.

    :meth:`wait` returns when the script (rank 0) has exited; the job's other processes then get ``grace`` seconds to
    end on their own. After that, on a timeout, or when the ``with`` block is left in any way, the whole group is
    killed: no rank or worker outlives the job. Output goes to temporary files, not pipes, which a surviving rank would
    hold open.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, script: str = "train.py") -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_ENV)}
        rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        own = {**rendezvous, JOB_ENV: "1", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        env = {**inherited, **own, **(env or {})}
        # Open for as long as the job runs: closed by __exit__ (or below, when the job cannot start).
        self._files = contextlib.ExitStack()
        self._out = self._files.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        self._err = self._files.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        self._killed = False
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / script), *args],
                cwd=ROOT,
                env=env,
                stdout=self._out,
                stderr=self._err,
                text=True,
                start_new_session=True,
            )
        except BaseException:
            self._files.close()
            raise

    def wait(self, timeout: float = 300, grace: float = 30) -> subprocess.CompletedProcess:
        """Waits for the job, then kills what is left of it.

        Returns:
            The finished rank-0 process, with its output as text (``returncode`` -9: killed by SIGKILL) and
            ``leftover``: the pids of the job still running ``grace`` seconds after rank 0 ended (killed then).
        """
        leftover: list[int] = []
        try:
            self.proc.wait(timeout=timeout)
            deadline = time.monotonic() + grace
            while (leftover := group_processes(self.proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self.kill()
        self._out.seek(0)
        self._err.seek(0)
        done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self._out.read(), self._err.read())
        done.leftover = leftover  # type: ignore[attr-defined]
        return done

    def kill(self) -> None:
        """SIGKILL to every process of the job (none left is fine); returns when they are gone (rank 0 reaped). Once
        only, since the group's number may be reused afterwards."""
        if self._killed:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10  # SIGKILL is delivered when each process is next scheduled
        while group_processes(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._killed = True

    def __enter__(self) -> TrainJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._files.close()


def group_processes(group: int) -> list[int]:
    """Pids of the processes of process group ``group``, zombies left out (they wait for a reaper, not for us)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process may end while it is read
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its closing parenthesis.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def read_samples(path: Path) -> dict[int, list[str]]:
    """``{global step: fingerprints}`` of a :class:`RecordSamples` file."""
    steps: dict[int, list[str]] = {}
    for line in path.read_text().splitlines():
        step, *prints = line.split()
        steps[int(step)] = prints  # a step recorded twice (lost, then redone) keeps the redone batch
    return steps


def _leaves(value: Any, key: str = "") -> dict[str, Any]:
    """Nested dicts / lists / tuples flattened to ``{"a/b/0": leaf}``."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _leaves(item, f"{key}/{name}").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{key}/{i}").items()}
    return {key: value}


def exact_state(run: Path) -> dict[str, Any]:
    """The :data:`EXACT_KEYS` entries of ``run``'s ``last.ckpt``, flattened (``state_dict/backbone...``)."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    return _leaves({key: ckpt[key] for key in EXACT_KEYS if key in ckpt})


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference over the float tensors of two :func:`exact_state` s (same keys)."""
    diffs = [
        float((a[k].double() - b[k].double()).abs().max())
        for k in a
        if isinstance(a[k], torch.Tensor) and a[k].is_floating_point() and a[k].numel()
    ]
    return max(diffs, default=0.0)


def _sample_counts(tmp: Path, interrupted: str, resumed: str, rank: int, resume_step: int) -> tuple[int, int, bool]:
    """(repeated, skipped, same order) of one rank's samples: the interrupted run up to the resume, then the resumed
    run, against the uninterrupted run."""
    ref = read_samples(samples_path(tmp, "uninterrupted", rank))
    first = read_samples(samples_path(tmp, interrupted, rank))
    second = read_samples(samples_path(tmp, resumed, rank))
    assert min(second) == resume_step, f"rank {rank}"
    history = {s: p for s, p in first.items() if s < resume_step} | second
    assert sorted(history) == sorted(ref), f"rank {rank}"
    seen = [x for s in sorted(history) for x in history[s]]
    expected = [x for s in sorted(ref) for x in ref[s]]
    repeated = len(seen) - len(set(seen)) - (len(expected) - len(set(expected)))
    return repeated, len(set(expected) - set(seen)), seen == expected


def compare_resumed(
    tmp: Path,
    interrupted: str,
    resumed: str,
    resume_step: int,
    capsys: pytest.CaptureFixture[str],
    world_size: int = 1,
) -> None:
    """Asserts that run ``resumed`` (from ``interrupted``'s checkpoint at ``resume_step``) is exact: on every rank the
    same sample sequence as the run ``uninterrupted`` (0 repeated, 0 skipped), a bit-identical final checkpoint
    (:data:`EXACT_KEYS`) and equal ``metrics.json``; prints the figures."""
    counts = [_sample_counts(tmp, interrupted, resumed, r, resume_step) for r in range(world_size)]
    repeated, skipped = sum(c[0] for c in counts), sum(c[1] for c in counts)
    a, b = exact_state(tmp / RUNS / "uninterrupted"), exact_state(tmp / RUNS / resumed)
    max_diff = max_difference(a, b) if a.keys() == b.keys() else float("nan")
    with capsys.disabled():  # the figures belong in the test output even when pytest captures it
        print(f"\n{resumed}: samples repeated: {repeated}, skipped: {skipped}, max checkpoint difference: {max_diff}")
    assert all(c[2] for c in counts), (
        f"a different sample sequence on ranks {[r for r, c in enumerate(counts) if not c[2]]}"
    )
    assert (repeated, skipped) == (0, 0)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    assert max_diff == 0.0
    others = [k for k in a if not isinstance(a[k], torch.Tensor) or not a[k].is_floating_point()]
    unequal = [k for k in others if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])]
    assert not unequal, unequal  # generator states, step counters, optimizer settings
    m_ref = json.loads((tmp / RUNS / "uninterrupted" / "metrics.json").read_text())
    m_res = json.loads((tmp / RUNS / resumed / "metrics.json").read_text())
    assert m_res == m_ref
