"""File-system primitives the folder writer builds its promises on: fsync, exclusive and exchanging
renames, and a per-destination lock.

- `rename_noreplace` creates the destination only if it is absent, in one step (Linux
  `renameat2(RENAME_NOREPLACE)`); where the kernel or file system lacks it, an exclusive `mkdir`
  claims the name first and the finished folder then replaces that empty folder (POSIX rename
  replaces an empty directory atomically).
- `rename_exchange` swaps two paths in one step (`renameat2(RENAME_EXCHANGE)`), so a complete
  destination exists at every instant; it raises `ExchangeUnsupported` where the OS cannot.
- `DestinationLock` is an `flock` on `.NAME.ckpt-convert-lock` beside the destination; a second
  holder fails at once with `DestinationBusy` instead of waiting or racing.

fsync can be turned off with CKPT_CONVERT_NO_FSYNC=1, for measuring its cost only.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path

from ..errors import DestinationBusy

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


class ExchangeUnsupported(OSError):
    """The OS or file system cannot swap two paths atomically."""


def fsync_enabled() -> bool:
    return os.environ.get("CKPT_CONVERT_NO_FSYNC", "") in ("", "0")


def fsync_fd(fd: int) -> None:
    if fsync_enabled():
        os.fsync(fd)


def copy_durably(src: Path, dst: Path) -> None:
    """Copy the file `src` to `dst` (a new file) and fsync it."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (names created, renamed, removed in it) durable."""
    if not fsync_enabled():
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on directories; their entries are then as durable as they get
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, musl without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2_fn = _load_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    if _renameat2_fn is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename the folder `src` to `dst` only if `dst` does not exist; FileExistsError otherwise."""
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        if exc.errno not in _UNSUPPORTED:
            raise
    os.mkdir(dst)  # the claim: exactly one mkdir of a name succeeds (FileExistsError for the others)
    try:
        os.rename(src, dst)  # replaces the empty folder we just made, atomically
    except BaseException:
        os.rmdir(dst)
        raise


def rename_exchange(a: Path, b: Path) -> None:
    """Swap `a` and `b` atomically (both must exist); ExchangeUnsupported where the OS cannot."""
    try:
        _renameat2(a, b, _RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise ExchangeUnsupported(exc.errno, exc.strerror, str(b)) from None
        raise


NAME_MAX = 255  # bytes in one path component (Linux, macOS and most file systems)


def fit_name(name: str, room: int) -> str:
    """`name`, or where its encoded form exceeds `room` bytes a prefix of it + "~" + 12 hex digits of
    its sha256: the names this tool puts beside a destination never overflow NAME_MAX, and stay
    distinct for distinct destinations."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return os.fsdecode(raw[:room - len(digest) - 1]) + "~" + digest


def lock_path(dst: Path) -> Path:
    suffix = ".ckpt-convert-lock"
    return dst.parent / f".{fit_name(dst.name, NAME_MAX - 1 - len(suffix))}{suffix}"


class DestinationLock:
    """Exclusive, non-blocking lock on writing `dst`, held as a context manager.

    The lock file is removed on release while still locked; an acquirer checks that the file it
    locked is still the one at the path (else it locked a removed file and tries again).
    """

    def __init__(self, dst: Path) -> None:
        self.dst, self.path = dst, lock_path(dst)
        self._fd: int | None = None

    def __enter__(self) -> DestinationLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DestinationBusy(f"{self.dst} is being written by another ckpt-convert run (lock {self.path}); "
                                      "retry when it has finished") from None
            except BaseException:
                os.close(fd)
                raise
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
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None


def remove_stale_lock(dst: Path) -> None:
    """Remove the lock file a killed run left beside `dst` (harmless, but clutter); a held one stays."""
    if os.path.lexists(lock_path(dst)):
        try:
            with DestinationLock(dst):
                pass
        except DestinationBusy:
            pass
