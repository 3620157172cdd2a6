"""The local process pool: a bounded number of jobs in flight, workers that die with the driver.

Jobs are pulled from the walker's generator only as workers free up (at most `IN_FLIGHT_PER_WORKER`
per worker queued), so memory and per-job cost stay constant however many files the tree holds,
and the first conversions start while the walk goes on. Each worker asks the kernel to kill it
when the driver dies (`prctl(PR_SET_PDEATHSIG)` on Linux), so a `kill -9` of the driver leaves no
worker converting on its own. Workers ignore SIGINT (Ctrl-C reaches the whole process group): the
driver alone decides, and when it is interrupted (SIGINT, SIGTERM) or stops reading results, it kills
its workers at once, busy or not, instead of waiting for their current jobs (`stop_workers`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .walker import Job

IN_FLIGHT_PER_WORKER = 4
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGKILL this worker when its parent dies (Linux), or exit now if it already has;
    ignore SIGINT (a Ctrl-C is the driver's to handle: it kills its workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the driver died before prctl took effect
        os._exit(1)


def local_pool(n: int) -> concurrent.futures.ProcessPoolExecutor:
    # spawn, not fork: a forked child of a process that already ran torch ops can deadlock.
    return concurrent.futures.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=die_with_parent, initargs=(os.getpid(),))


def stop_workers(pool: concurrent.futures.ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """SIGKILL every worker of `pool` now and wait until each is dead, so that the temp folders they were
    building can be told apart as stale (their owner gone) and removed. The executor has no public way
    to end busy workers: `shutdown` waits for their jobs, however long."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):  # exited meanwhile
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout)


def crashed_entry(job: Job, exc: BaseException, what: str = "worker failed") -> dict[str, Any]:
    """The entry of a job whose worker died (OOM-killed, segfault): recorded as failed, the run goes on."""
    return {"kind": job.kind, "output": job.output_rel, "bytes": job.size, "status": "failed",
            "reason": f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def run_bounded(fn: Callable[..., dict[str, Any]], jobs: Iterable[Job], args: tuple, n: int,
                min_for_pool: int = 2) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Yield `(job, fn(job, *args))` as jobs finish, on `n` worker processes with a bounded queue.

    With `n == 1`, or fewer than `min_for_pool` jobs in total, the jobs run in this process: a
    worker's start-up (importing torch) costs more than it saves.
    """
    it = iter(jobs)
    head = list(itertools.islice(it, min_for_pool))
    if n == 1 or len(head) < min_for_pool:
        for job in itertools.chain(head, it):
            yield job, fn(job, *args)
        return
    source = itertools.chain(head, it)
    limit = n * IN_FLIGHT_PER_WORKER
    pool = local_pool(n)
    try:
        running: dict[concurrent.futures.Future, Job] = {}
        exhausted = False
        while running or not exhausted:
            while not exhausted and len(running) < limit:
                job = next(source, None)
                if job is None:
                    exhausted = True
                    break
                try:
                    running[pool.submit(fn, job, *args)] = job
                except BrokenProcessPool:  # a worker died and took the pool with it: start a new one
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = local_pool(n)
                    running[pool.submit(fn, job, *args)] = job
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    entry = future.result()
                except Exception as exc:  # the worker died (OOM-killed, segfault): record it, go on
                    entry = crashed_entry(job, exc)
                yield job, entry
    except BaseException:  # interrupted, or the consumer stopped (GeneratorExit): no job is waited for
        stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
