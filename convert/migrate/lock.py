"""One migrate per destination: DST/.ckpt-convert.lock, a `primitives.lock.RunLock` held for the whole run."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConvertError
from ..primitives.lock import RunLock

LOCK_NAME = ".ckpt-convert.lock"


class MigrateRunning(ConvertError):
    """Another migrate holds the destination's lock."""


def holder_pid(dst: Path) -> int | None:
    """The pid written by the lock's holder if the lock is held now, else None (read-only check)."""
    return RunLock.holder_pid(dst, LOCK_NAME)


def migrate_lock(dst: Path) -> RunLock:
    """Take the destination's migrate lock; `MigrateRunning` (exit 2) if another process holds it."""
    return RunLock(dst, LOCK_NAME, lambda pid: MigrateRunning(
        f"another migrate is running on {dst} (pid {pid or 'unknown'}); wait for it or stop it"))
