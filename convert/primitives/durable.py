"""File-system primitives the folder writer builds its promises on: fsync, durable and atomic small-file
writes, exclusive and exchanging renames.

- `rename_noreplace` creates the destination only if it is absent, in one step (Linux
  `renameat2(RENAME_NOREPLACE)`); where the kernel or file system lacks it, an exclusive `mkdir`
  claims the name first and the finished folder then replaces that empty folder (POSIX rename
  replaces an empty directory atomically).
- `rename_exchange` swaps two paths in one step (`renameat2(RENAME_EXCHANGE)`), so a complete
  destination exists at every instant; it raises `ExchangeUnsupported` where the OS cannot.
(The per-destination lock is primitives/lock.py.)

fsync can be turned off with CKPT_CONVERT_NO_FSYNC=1 (primitives/faults.py), for measuring its cost only.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from . import faults

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


class ExchangeUnsupported(OSError):
    """The OS or file system cannot swap two paths atomically."""


fsync_enabled = faults.fsync_enabled


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


def write_durable(path: Path, data: bytes, mode: str = "wb") -> None:
    """Write `data` as the file `path` and fsync it (inside a temp folder that is renamed into place later)."""
    with open(path, mode) as out:
        out.write(data)
        out.flush()
        fsync_fd(out.fileno())


def write_atomic(path: Path, data: bytes | Iterable[bytes], before_rename: Callable[[], None] | None = None) -> None:
    """Replace the small file `path` with `data` (bytes, or chunks of it) atomically and durably: a unique
    temp file beside it (`NAME.tmp-PID-RANDOM`), fsync'd, renamed over `path`, the folder fsync'd. A crash
    leaves the old file or the new one, never a torn one; the temp file is removed on any error.

    Args:
        path: the file to replace (or create).
        data: its new content.
        before_rename: runs after the fsync and before the rename (a fault point).
    Raises:
        OSError: as the file system reports it (the caller words it).
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:
            for chunk in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(chunk)
            f.flush()
            fsync_fd(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
    """Rename the folder (or file) `src` to `dst` only if `dst` does not exist; FileExistsError otherwise."""
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        if exc.errno not in _UNSUPPORTED:
            raise
    if not os.path.isdir(src):  # a file: a hard link claims the name exclusively (FileExistsError if taken)
        os.link(src, dst)
        os.unlink(src)
        return
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
