"""`migrate` and folder `scan`: every checkpoint under a folder, in parallel, resumable, verified.

    >>> report = migrate("old_models/", "new_models/", jobs=4)   # doctest: +SKIP
    >>> report.exit_code                                        # doctest: +SKIP
    0
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..read.dcp import dcp_files
from .manifest import Manifest
from .report import REPORT_NAME, Report
from .walker import Job, find_jobs
from .worker import run_job, scan_job

__all__ = ["Report", "migrate", "scan_folder"]


def _fingerprint(job: Job) -> tuple[int, int]:
    """(size, newest mtime) of the job's input files: what decides whether a re-run may skip it."""
    if job.kind == "file":
        st = job.source.stat()
        return st.st_size, st.st_mtime_ns
    if job.kind == "dcp":
        return job.size, max(p.stat().st_mtime_ns for p in dcp_files(job.source))
    from .hf import INDEX, hf_checkpoint_files

    paths = [*hf_checkpoint_files(job.source), *([job.source / INDEX] if (job.source / INDEX).exists() else [])]
    return job.size, max(p.stat().st_mtime_ns for p in paths)


def _remove_stale_temporaries(dst: Path) -> None:
    """Folders a killed run was still writing (`.NAME.tmp-*`, `.NAME.old-*`) are never outputs."""
    for root, dirs, _ in os.walk(dst):
        for d in list(dirs):
            if d.startswith(".") and (".tmp-" in d or ".old-" in d):
                shutil.rmtree(Path(root) / d, ignore_errors=True)
                dirs.remove(d)


def _local_pool(jobs: int) -> concurrent.futures.Executor:
    # spawn, not fork: a forked child of a process that already ran torch ops can deadlock.
    return concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def _progress(quiet: bool, total_files: int, total_bytes: int) -> Any:
    if quiet:
        return None
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        return None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeElapsedColumn(), transient=False)
    progress.start()
    progress.task = progress.add_task(f"0/{total_files} files", total=total_bytes or 1)  # type: ignore[attr-defined]
    progress.counts = [0, total_files]  # type: ignore[attr-defined]
    return progress


def migrate(src: str | os.PathLike, dst: str | os.PathLike, *, jobs: int | None = None, quiet: bool = True,
            max_shard_size: str | None = None, submit: Callable[[list[Job], str, str | None], Iterable] | None = None,
            ) -> Report:
    """Convert every checkpoint under `src` into the mirrored folder `dst`, verify each, and report.

    Resumable: a manifest in `dst` records each finished file (source size, mtime, sha256, status,
    output); a re-run skips what was converted and verified, retries what failed. `src` is never
    written to. `submit` replaces the local process pool (e.g. Ray): it receives the pending jobs,
    the destination and the shard size and yields `(job, entry)` as jobs finish.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder")
    dst.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dst)
    manifest = Manifest(dst)
    found, others = find_jobs(src, skip=dst)
    report = Report("migrate", str(src), str(dst), other_files=others)
    todo: list[Job] = []
    prints: dict[str, tuple[int, int]] = {}
    for job in found:
        prints[job.rel] = size, mtime = _fingerprint(job)
        previous = manifest.done(job.rel, size, mtime, dst)
        if previous:
            report.files[job.rel] = {**previous, "status": "skipped"}
        else:
            todo.append(job)
    progress = _progress(quiet, len(todo), sum(j.size for j in todo))
    if submit is not None:
        results = submit(todo, str(dst), max_shard_size)
    else:
        results = _run_local(todo, str(dst), max_shard_size, jobs or os.cpu_count() or 1)
    try:
        for job, entry in results:
            size, mtime = prints[job.rel]
            entry.update(size=size, mtime_ns=mtime)
            manifest.record(job.rel, entry)
            report.files[job.rel] = entry
            if progress is not None:
                progress.counts[0] += 1
                progress.update(progress.task, advance=job.size, description=f"{progress.counts[0]}/{progress.counts[1]} files")
    finally:
        if progress is not None:
            progress.stop()
    report.write(dst / REPORT_NAME)
    return report


def _run_local(todo: list[Job], dst: str, max_shard_size: str | None, n: int) -> Iterable[tuple[Job, dict]]:
    if n == 1 or len(todo) == 1:  # a worker's start-up (importing torch) costs more than it saves
        for job in todo:
            yield job, run_job(job, dst, max_shard_size)
        return
    with _local_pool(n) as pool:
        futures = {pool.submit(run_job, job, dst, max_shard_size): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            try:
                entry = future.result()
            except Exception as exc:  # the worker died (OOM-killed, segfault): record it, go on
                entry = {"kind": job.kind, "output": job.output_rel, "bytes": job.size, "status": "failed",
                         "reason": f"worker failed: {type(exc).__name__}: {exc}"}
            yield job, entry


def scan_folder(src: str | os.PathLike, *, jobs: int | None = None) -> Report:
    """Scan every checkpoint under `src` with the same walker; nothing is written."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder")
    found, others = find_jobs(src)
    report = Report("scan", str(src), None, other_files=others)
    if not found:
        return report
    n = jobs or os.cpu_count() or 1
    # a pool's start-up costs more than a few small scans
    results = ((job, scan_job(job)) for job in found) if n == 1 or len(found) < 8 else _scan_pool(found, n)
    for job, entry in results:
        report.files[job.rel] = entry
    return report


def _scan_pool(found: list[Job], n: int) -> Iterable[tuple[Job, dict]]:
    with _local_pool(n) as pool:
        yield from zip(found, pool.map(scan_job, found, chunksize=8))
