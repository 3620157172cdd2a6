"""The source file as the reader sees it: a regular file, read with pread, whose identity is checked.

* Only regular files are opened: a FIFO, device, socket or folder is refused by `stat` before
  `open`, and the file is opened with O_NONBLOCK and checked again with `fstat` (a FIFO swapped in
  between cannot make `open` block).
* Bytes are read with `pread`, never through a mapping: a file truncated underneath gives a short
  read (a clean `SourceChanged`) instead of SIGBUS, and an I/O error names the path.
* `Identity` (device, inode, size, mtime, ctime) is taken when the file is opened and compared
  again before anything is published: the kernel updates ctime on every write and nobody can set
  it back, so an unchanged identity means every byte read came from the same file contents.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvertError

# A file changed less than this long ago may be changed again within the same coarse timestamp tick
# (file times advance by the kernel's tick, a few milliseconds): wait it out before taking the identity.
SETTLE_SECONDS = 0.05
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class SourceChanged(ConvertError):
    """The source file was modified, truncated or replaced while it was being read."""


@dataclass(frozen=True)
class Identity:
    """What changes when a file's contents do: compared before and after reading."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def not_regular(path: Path) -> str:
    """Why `path` is not a regular file (symlinks followed), as a phrase: "is missing", "is a FIFO (named pipe),
    not a regular file", ...; "" if it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is missing" if not os.path.islink(path) else "is a dangling symbolic link"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "" if stat.S_ISREG(mode) else f"is {_kind(mode)}, not a regular file"


def _environment_error(path: Path, exc: OSError, doing: str) -> ConvertError:
    if exc.errno == errno.ENOENT:
        return ConvertError(f"{path}: no such file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConvertError(f"{path}: permission denied")
    return ConvertError(f"{path}: cannot {doing} ({exc.strerror or exc})")


def open_own_file(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open one of the tool's own small files (a marker, a journal) without waiting and without following a
    symlink planted in its place: a FIFO there must not block the open, only a regular file is accepted.

    Returns the descriptor in blocking mode (close-on-exec). Raises OSError (a FIFO or anything but a regular
    file: EINVAL, "not a regular file (move it away)"), which callers word for their file.
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (move it away)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open `path` read-only if it is a regular file; returns (fd, fstat). Raises ConvertError otherwise.

    Args:
        path: the source file (symlinks are followed: a link to a regular file is fine).
    Returns:
        The open descriptor (blocking mode, close-on-exec) and its `fstat`.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _environment_error(path, exc, "read") from None
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block until a writer appears
        raise ConvertError(f"{path}: is {_kind(st.st_mode)}, not a regular file; only regular files are read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _environment_error(path, exc, "open") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise ConvertError(f"{path}: is {_kind(st.st_mode)}, not a regular file; only regular files are read")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if time.time_ns() - st.st_ctime_ns < SETTLE_SECONDS * 1e9:
            time.sleep(SETTLE_SECONDS)  # see SETTLE_SECONDS: a later write then gets a later ctime
            st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class SourceBytes:
    """Read-only, pread-based access to the first `size` bytes of an open file (no mmap, no SIGBUS).

    `len()` is the size at open; `read(offset, n)` returns exactly n bytes or raises SourceChanged
    (the file became shorter) or ConvertError (an I/O error, with the path). `fileno()` lets the
    writer copy ranges with pread, which likewise cannot fault.
    """

    def __init__(self, fd: int, size: int, path: Path) -> None:
        self._fd, self._size, self.path = fd, size, path

    def __len__(self) -> int:
        return self._size

    def fileno(self) -> int:
        return self._fd

    def read(self, offset: int, n: int) -> bytes:
        """Exactly `n` bytes at `offset` (n may be 0)."""
        if n <= 0:
            return b""
        if offset < 0 or offset + n > self._size:
            raise ValueError(f"read of {n} bytes at {offset} outside a {self._size}-byte file")
        try:
            data = os.pread(self._fd, n, offset)
            if len(data) < n:  # pread may return less on huge requests: finish with readinto-style reads
                buf = bytearray(data)
                while len(buf) < n:
                    more = os.pread(self._fd, n - len(buf), offset + len(buf))
                    if not more:
                        raise SourceChanged(f"{self.path} changed while it was being read (it is now shorter)")
                    buf += more
                data = bytes(buf)
        except OSError as exc:
            raise _environment_error(self.path, exc, "read") from None
        except MemoryError:
            raise ConvertError(f"{self.path}: {n} bytes at byte {offset} do not fit in memory") from None
        return data
