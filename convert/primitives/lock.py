"""The one lock: an exclusive, non-blocking `flock` on a lock file; a second holder fails at once.

Two policies, two named classes over the same core:
- `WriterLock` — held while one folder is written: `.NAME.ckpt-convert-lock` *beside* the destination,
  removed on release (an acquirer that locked a file removed meanwhile tries again).
- `RunLock` — held for a whole run over a destination folder (migrate): a file *inside* it that is never
  removed (removing it would let two runs lock two different files); it holds the holder's pid for the
  message a second run prints.
The kernel drops an flock when its holder dies (kill -9 included), so neither is ever stale.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import ConvertError, DestinationBusy
from .durable import NAME_MAX, fit_name
from .source import open_own_file

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def _try_lock(fd: int) -> bool:
    """flock(fd) exclusively without waiting: True if taken, False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except BaseException:
        os.close(fd)
        raise
    return True


def _recorded_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""


def lock_path(dst: Path) -> Path:
    """Where `WriterLock(dst)` locks: `.NAME.ckpt-convert-lock` beside `dst` (NAME shortened to fit)."""
    suffix = ".ckpt-convert-lock"
    return dst.parent / f".{fit_name(dst.name, NAME_MAX - 1 - len(suffix))}{suffix}"


class WriterLock:
    """Exclusive, non-blocking lock on writing `dst`, held as a context manager; `DestinationBusy` if held."""

    def __init__(self, dst: Path) -> None:
        self.dst, self.path = dst, lock_path(dst)
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        while True:
            fd = os.open(self.path, _OPEN_FLAGS, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise DestinationBusy(f"{self.dst} is being written by another ckpt-convert run (lock {self.path}); "
                                      "retry when it has finished")
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)  # the holder released and removed it between our open and flock: start over

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still locked: the next acquirer sees a fresh file
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None


def remove_stale_lock(dst: Path) -> None:
    """Remove the lock file a killed run left beside `dst` (harmless, but clutter); a held one stays."""
    if os.path.lexists(lock_path(dst)):
        try:
            with WriterLock(dst):
                pass
        except DestinationBusy:
            pass


class RunLock:
    """Exclusive lock for a run over `folder`, on the kept file `folder/name`; taken in the constructor.

    Args:
        folder: the folder (it must exist).
        name: the lock file's name inside it.
        busy: builds the error raised when another process holds it, from the holder's pid ("" if unknown).
    """

    def __init__(self, folder: Path, name: str, busy: Callable[[str], ConvertError]) -> None:
        self.path = folder / name
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise ConvertError(f"{self.path}: cannot create the lock file: {exc.strerror}") from None
        if not _try_lock(fd):
            pid = _recorded_pid(fd)
            os.close(fd)
            raise busy(pid)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    @staticmethod
    def holder_pid(folder: Path, name: str) -> int | None:
        """The pid written by the holder if the lock is held now (-1: unreadable), else None (read-only check)."""
        try:
            fd = open_own_file(folder / name)  # as the lock itself is opened: no wait on a FIFO, no symlink followed
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _recorded_pid(fd)
                return int(pid) if pid else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
