"""One migrate per destination: DST/.ckpt-convert.lock, held with `flock` for the whole run.

The kernel releases the lock when the holder dies (kill -9 included), so there is never a stale
lock to remove; the file itself is never deleted (deleting it would let two runs lock two
different files). It holds the holder's pid, for the message the second run prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import ConvertError

LOCK_NAME = ".ckpt-convert.lock"


class MigrateRunning(ConvertError):
    """Another migrate holds the destination's lock."""


def holder_pid(dst: Path) -> int | None:
    """The pid written by the lock's holder if the lock is held now, else None (read-only check)."""
    try:
        fd = os.open(dst / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DestinationLock:
    """An exclusive lock on `dst`; raises `MigrateRunning` (exit 2) if another process holds it."""

    def __init__(self, dst: Path) -> None:
        self.path = dst / LOCK_NAME
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConvertError(f"{self.path}: cannot create the migrate lock: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self._fd)
            pid = f"pid {text}" if text.isdigit() else "pid unknown"
            raise MigrateRunning(f"another migrate is running on {dst} ({pid}); wait for it or stop it") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1

    def __enter__(self) -> DestinationLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
