"""Scanning many files: folders are walked with `discover.walk`, files are scanned in parallel.

The selection is what `migrate` converts: checkpoints found by name and content, and units (HF,
Trainer/Accelerate, DCP folders) file by file, every pickle inside them included.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import ScanReport
from .scanner import scan_file
from .sources import looks_like_checkpoint

POOL_THRESHOLD = 8  # fewer files than this are scanned in-process: a pool's start-up costs more
MAX_CHUNK = 64  # files handed to a worker at once: what a signal waits for (tens of ms of small files)


@dataclass
class Selection:
    """The files to scan, in a stable order, and how many files were passed over as not checkpoints."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    others: int = 0  # files under the folders that are not checkpoints


def select(paths: list[str | os.PathLike], *, skip_non_checkpoints: bool = False) -> Selection:
    """Expand folders with `discover.walk` (the walk `migrate` converts); keep files as given.

    A unit (HF folder, Trainer/Accelerate checkpoint, DCP folder) is scanned file by file: every
    pickle in it, by name or by content, subfolders included, and each DCP folder as one checkpoint.

    Args:
        paths: files and folders from the command line.
        skip_non_checkpoints: leave out given files whose first bytes are no checkpoint's, whatever their
            name (pre-commit's by-content hook passes every binary file).

    Returns:
        A Selection.
    """
    out = Selection()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            from ..sources.discover import WalkStats, unit_sources, walk  # here: a file needs no walker

            stats = WalkStats()
            for found in walk(path, stats):
                out.files += [found.path] if found.kind == "file" else unit_sources(found.kind, found.path, path)
            out.others += stats.others + stats.special
        elif skip_non_checkpoints and path.is_file() and not looks_like_checkpoint(path):
            out.skipped.append(path)
        else:
            out.files.append(path)
    return out


def scan_many(files: list[Path], *, jobs: int | None = None, progress: bool = False) -> list[ScanReport]:
    """Scan `files` (in parallel when there are many), reports in the order of `files`.

    Args:
        files: the files to scan.
        jobs: worker processes (default: the number of cores).
        progress: show a progress bar on stderr.

    Returns:
        One ScanReport per file.
    """
    n = max(1, jobs or os.cpu_count() or 1)
    if n == 1 or len(files) < POOL_THRESHOLD:
        with _progress_bar(progress, len(files)) as advance:
            reports = []
            for path in files:
                reports.append(scan_file(path))
                advance()
            return reports
    import concurrent.futures  # here: a single file needs no pool (start-up time of every scan)

    workers = min(n, len(files))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=_start_method(),
                                                initializer=_worker_signals) as pool:
        # map submits every chunk now, so the workers start before the progress bar's refresh thread
        results = pool.map(scan_file, files, chunksize=min(MAX_CHUNK, max(4, len(files) // (workers * 16))))
        with _progress_bar(progress, len(files)) as advance:
            reports = []
            for report in results:
                reports.append(report)
                advance()
            return reports


def _worker_signals() -> None:
    """A worker leaves Ctrl-C and SIGTERM (both sent to the whole process group) to the CLI, which says one
    line and stops the pool: each worker then finishes the chunk it holds (at most MAX_CHUNK files) and exits.
    A worker that took the signal itself would print a traceback of its own, or (killed) break the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _start_method() -> Any:
    """fork where it is safe, spawn elsewhere. Forked workers start at once with the scanner already
    imported (spawned ones import it again: ~0.2 s each); but a forked child of a process that imported
    torch, or that runs other threads, can deadlock on a lock held at the fork (and on macOS, where
    Python itself defaults to spawn, system frameworks are not fork-safe)."""
    import multiprocessing

    if sys.platform.startswith("linux") and "torch" not in sys.modules and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class _progress_bar:  # noqa: N801 - used as a context manager, like contextlib's
    """A rich progress bar on stderr (nothing when disabled or rich is missing); yields `advance()`."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar, self.task = enabled and total > 1, total, None, None

    def __enter__(self) -> Any:
        if self.enabled:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                return lambda: None
            self.bar = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(file=sys.stderr), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("scan", total=self.total)
            return lambda: self.bar.advance(self.task)
        return lambda: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
