"""The migrate progress bar: files done / found, bytes, throughput; cheap per file at any count.

While the walker is still listing the tree the total is not known yet: the description says
`found+` and the bar's total grows as jobs are found; rich redraws at a fixed rate, so a file
costs two counter updates, not a redraw.
"""

from __future__ import annotations

from typing import Any

from .walker import Job


class MigrateProgress:
    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self.done = self.found = 0
        self.walking = True
        if not enabled:
            return
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
            return
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeElapsedColumn(), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(self._description(), total=None)
        self._bytes = 0

    def _description(self) -> str:
        return f"{self.done}/{self.found}{'+' if self.walking else ''} files"

    def found_job(self, job: Job) -> None:
        self.found += 1
        if self._bar is not None:
            self._bytes += job.size
            self._bar.update(self._task, total=self._bytes or 1, description=self._description())

    def finished_job(self, job: Job) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=job.size, description=self._description())

    def walk_finished(self) -> None:
        self.walking = False
        if self._bar is not None:
            self._bar.update(self._task, total=self._bytes or 1, description=self._description())

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
