"""Runs rendering jobs serially or on a process pool; the files written do not depend on the choice.

Each job is a pure function of its parameters (see :mod:`facetrain.data.synthetic.seeds`), so the pool only changes
how long generation takes, and a pool that breaks can be replaced by rendering everything again in this process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TypeVar

import cv2

__all__ = ["run_jobs"]

logger = logging.getLogger(__name__)

Job = TypeVar("Job")


def _worker_init() -> None:
    # One OpenCV thread per worker: the pool already uses every core, more threads only contend.
    cv2.setNumThreads(1)


@contextmanager
def _opencv_threads(n: int) -> Iterator[None]:
    """Temporarily sets OpenCV's thread count in this process."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def run_jobs(run: Callable[[Job], int], jobs: Sequence[Job], workers: int) -> int:
    """Runs ``run`` on every job and returns the sum of what it returns (the files written).

    Args:
        run: Renders one job and returns the number of files it wrote; a module-level function, so that pool
            workers can import it.
        jobs: The jobs (picklable).
        workers: Processes; 1 renders in this process.
    """
    # Daemonic processes (e.g. DataLoader workers) may not have children, so they render serially.
    if workers <= 1 or len(jobs) < 4 or mp.current_process().daemon:
        return sum(run(job) for job in jobs)
    # fork copies OpenCV's thread-pool bookkeeping but not its threads, so a child's first parallel OpenCV call
    # would wait forever on them if this process had used OpenCV before. With the pool shrunk to one thread while
    # forking, children inherit no pool. (fork rather than spawn: no re-import of the caller's __main__.)
    # A ProcessPoolExecutor, not mp.Pool: when a worker dies (a crash in a forked child), mp.Pool waits forever for
    # its lost task, and the other workers can block on a queue lock it held; the executor raises BrokenProcessPool.
    # The jobs are pure functions of their parameters, so rendering them all again in this process is exact.
    try:
        with (
            _opencv_threads(1),
            ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_init) as pool,
        ):
            return sum(pool.map(run, jobs, chunksize=4))
    except BrokenProcessPool as error:
        logger.warning("synthetic: a render worker died (%s); rendering the %d jobs in this process", error, len(jobs))
        return sum(run(job) for job in jobs)
