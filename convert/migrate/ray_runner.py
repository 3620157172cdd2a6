"""Running migration jobs on a Ray cluster instead of the local process pool.

The walker, journal, verification and report stay in the driver (`migrate`); only the
per-file work (`run_job`: convert + verify) runs as Ray tasks, pulled from the walker with a
bounded number in flight. Tasks are idempotent (each writes its own output folder atomically, and a
retry that finds the output its earlier attempt installed adopts it: `worker.run_job`), so Ray may
retry them when a worker dies; the
journal is written by the driver alone, and only from a task's returned result, so a worker that
dies mid-file leaves no trace in it. Each task declares the memory its file needs, so big
checkpoints are not packed onto one node. Every node must see SRC and DST at the same paths
(shared storage).
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import ConvertError
from ..primitives import faults
from ..primitives.signals import Terminated
from .pool import crashed_entry
from .walker import Job
from .worker import FAULT_ENV, pool_job

__all__ = ["FAULT_ENV", "ray_submit", "task_memory"]

BASE_MEMORY = 768 << 20  # a worker with torch imported, before any checkpoint
IN_FLIGHT_PER_CPU = 4  # tasks submitted ahead of the results: bounded, so the driver's cost per file is constant


def task_memory(job: Job) -> int:
    """Bytes a task may need: verification holds the source tree in memory next to the mapped output."""
    return BASE_MEMORY + 2 * job.size


def ray_submit(address: str | None, *, max_retries: int = 3) -> Any:
    """A `submit` function for `migrate` that runs jobs on Ray (a local instance when `address` is None)."""
    try:
        import ray
    except ImportError:
        raise ConvertError("--ray needs Ray: pip install -e '.[ray]'") from None

    def submit(jobs: Iterable[Job], dst: str, max_shard_size: str | None,
               sign_key: str | None = None) -> Iterator[tuple[Job, dict]]:
        source = iter(jobs)
        first = next(source, None)
        if first is None:  # nothing to do: do not start Ray at all
            return
        started_here = not ray.is_initialized()
        terminated: list[int] = []
        on_sigterm = None
        pending: dict[Any, Job] = {}
        if started_here:
            env = faults.inherited_env()
            sigterm = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                         runtime_env={"env_vars": env} if env else None)
            except Exception as exc:  # connection refused, bad address, cannot start
                raise ConvertError(f"cannot start or reach Ray at {address or 'a local instance'}: {exc}") from None
            if callable(sigterm) and threading.current_thread() is threading.main_thread():
                # Ray's init takes SIGTERM over (it logs a stack and exits 1): give it back to migrate, which
                # stops cleanly (tasks cancelled, jobs journaled as interrupted, exit 143)
                def on_sigterm(signum: int, frame: Any) -> None:
                    terminated.append(signum)
                    sigterm(signum, frame)

                signal.signal(signal.SIGTERM, on_sigterm)
        try:
            largest = max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
            limit = max(8, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
            remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(pool_job)
            queue = itertools.chain([first], source)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < limit:
                    job = next(queue, None)
                    if job is None:
                        exhausted = True
                        break
                    need = task_memory(job)
                    memory = min(need, int(largest)) if largest else need  # never ask for more than a node has
                    pending[remote.options(memory=memory).remote(job, dst, max_shard_size, sign_key)] = job
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        entry = ray.get(ref)
                    except Exception as exc:  # retries exhausted: the worker kept dying
                        entry = crashed_entry(job, exc, "Ray task failed")
                    yield job, entry
        except BaseException as exc:  # interrupted, or the driver stopped reading: end the tasks, do not wait
            if not started_here and pending:  # else ray.shutdown below ends them (a forced cancel of a task
                with contextlib.suppress(Exception):  # that has just finished crashes Ray 2.60's driver)
                    _, running = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                    for ref in running:
                        ray.cancel(ref)
            if terminated and isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Terminated):
                raise Terminated from None  # Ray's wait turns the handler's exception into a KeyboardInterrupt
            raise
        finally:
            if on_sigterm is not None and signal.getsignal(signal.SIGTERM) is on_sigterm:
                signal.signal(signal.SIGTERM, sigterm)  # not fired: migrate's own handler again
            if started_here:
                ray.shutdown()

    return submit
