"""Running migration jobs on a Ray cluster instead of the local process pool.

The walker, manifest, verification and report stay in the driver (`migrate`); only the
per-file work (`run_job`: convert + verify) runs as Ray tasks. Tasks are idempotent (each writes
its own output folder atomically, with overwrite), so Ray may retry them when a worker dies; the
manifest is written by the driver alone, and only from a task's returned result, so a worker that
dies mid-file leaves no trace in it. Each task declares the memory its file needs, so big
checkpoints are not packed onto one node. Every node must see SRC and DST at the same paths
(shared storage).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..errors import ConvertError
from .walker import Job
from .worker import run_job

BASE_MEMORY = 768 << 20  # a worker with torch imported, before any checkpoint
FAULT_ENV = "CKPT_CONVERT_FAULT_INJECT"  # test-only: "REL:MARKER" makes the first attempt on REL hang


def task_memory(job: Job) -> int:
    """Bytes a task may need: verification holds the source tree in memory next to the mapped output."""
    return BASE_MEMORY + 2 * job.size


def _task(job: Job, dst: str, max_shard_size: str | None) -> dict[str, Any]:
    fault = os.environ.get(FAULT_ENV, "")
    if fault.startswith(job.rel + ":"):
        marker = fault.split(":", 1)[1]
        if not os.path.exists(marker):  # first attempt: announce our pid and wait to be killed
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            import time

            time.sleep(600)
    return run_job(job, dst, max_shard_size)


def ray_submit(address: str | None, *, max_retries: int = 3) -> Any:
    """A `submit` function for `migrate` that runs jobs on Ray (a local instance when `address` is None)."""
    try:
        import ray
    except ImportError:
        raise ConvertError("--ray needs Ray: pip install -e '.[ray]'") from None

    def submit(todo: list[Job], dst: str, max_shard_size: str | None) -> Iterable[tuple[Job, dict]]:
        if not todo:
            return
        started_here = not ray.is_initialized()
        if started_here:
            env = {k: v for k, v in os.environ.items() if k.startswith("CKPT_CONVERT_")}
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                         runtime_env={"env_vars": env} if env else None)
            except Exception as exc:  # connection refused, bad address, cannot start
                raise ConvertError(f"cannot start or reach Ray at {address or 'a local instance'}: {exc}") from None
        try:
            largest = max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
            remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(_task)
            pending = {}
            for job in todo:
                need = task_memory(job)
                memory = min(need, int(largest)) if largest else need  # never ask for more than a node has
                pending[remote.options(memory=memory).remote(job, dst, max_shard_size)] = job
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        entry = ray.get(ref)
                    except Exception as exc:  # retries exhausted: the worker kept dying
                        entry = {"kind": job.kind, "output": job.output_rel, "bytes": job.size, "status": "failed",
                                 "reason": f"Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"}
                    yield job, entry
        finally:
            if started_here:
                ray.shutdown()

    return submit
