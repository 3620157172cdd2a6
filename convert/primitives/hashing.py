"""The one sha256 hasher: of an open file's byte range, of a path; and on a thread.

Every sha256 of a file in the package goes through here (provenance of inputs, digests of written
data files, verify). A file's digest is computed on a thread while the conversion runs
(`BackgroundSha256`, or `BackgroundSha256.of_files` for a folder's several inputs).

The input is read with pread into one small reusable buffer, so it adds nothing to the process's
memory (hashing the mmap would fault the whole file into RSS) and a file that shrinks meanwhile is
an error, not a SIGBUS. The buffer is a page-aligned `CopyBuffer` (a bytearray would make each
pread about 3x slower on AMD CPUs: see copy_buffer.py). An output file is hashed by `OutputDigest`,
which follows the writer: every range is hashed right after it is written, read back from the page
cache through a short-lived mapping (no copy into a buffer), so hashing and copying overlap and no
second pass over the finished file is needed. sha256, pread and write all release the GIL. (Starting each range's
writeback early with sync_file_range was measured too: it made durable conversions slower here,
the thread stalling on the disk queue, so the fsync after each file does all of it.)
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from .copy_buffer import CopyBuffer
from .source import open_regular

READ_CHUNK = 256 << 10  # bytes per pread when hashing a file


def sha256_fd(fd: int, size: int | None = None, stop: threading.Event | None = None,
              path: os.PathLike | str | None = None) -> str:
    """The sha256 hex digest of the first `size` bytes of the open file `fd` (its position is not used).

    Args:
        fd: an open file descriptor.
        size: how many bytes to hash (the file's size when it was opened); None: up to the end of the
            file, however long it is then (a file the caller wrote itself).
        stop: set it to cancel (raises InterruptedError).
        path: the file's name for errors: given, an I/O error or a file that shrank is a ConvertError
            naming it; otherwise an OSError.
    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    buffer = CopyBuffer(READ_CHUNK if size is None else min(READ_CHUNK, max(size, 1)))
    offset = 0
    try:
        while size is None or offset < size:
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing cancelled")
            view = buffer.view(offset)
            n = os.preadv(fd, [view if size is None else view[:size - offset]], offset)
            if n == 0:
                if size is None:
                    break
                raise OSError("file shrank while it was being hashed")
            digest.update(view[:n])
            offset += n
    except InterruptedError:
        raise
    except OSError as exc:
        if path is None:
            raise
        if exc.errno is None:  # the short read above
            raise ConvertError(f"{path} changed while it was being read (it is now shorter)") from None
        raise ConvertError(f"{path}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def sha256_path(path: os.PathLike | str, stop: threading.Event | None = None) -> str:
    """The sha256 hex digest of the whole regular file at `path` (opened as every source is: `open_regular`)."""
    fd, st = open_regular(Path(path))
    try:
        return sha256_fd(fd, st.st_size, stop, path)
    finally:
        os.close(fd)


def file_part(path: Path, stop: threading.Event | None = None) -> dict[str, Any]:
    """{"name", "size", "sha256"} of the file at `path` (a provenance part)."""
    fd, st = open_regular(Path(path))
    try:
        return {"name": path.name, "size": st.st_size, "sha256": sha256_fd(fd, st.st_size, stop, path)}
    finally:
        os.close(fd)


class BackgroundSha256:
    """Start hashing `fd` now; `hexdigest()` waits for it. Use as a context manager (cancels on exit).

    Errors reading the file are ConvertErrors naming `path` (see `sha256_fd`).
    """

    def __init__(self, fd: int, size: int, path: os.PathLike | str | None = None) -> None:
        self._start(lambda stop: sha256_fd(fd, size, stop, path))

    def _start(self, work: Any) -> None:
        self._stop = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="ckpt-convert-sha256", daemon=True)
        self._thread.start()

    @classmethod
    def of_files(cls, paths: Iterable[Path]) -> BackgroundSha256:
        """Hash the files at `paths` one after the other on one thread; `parts()` waits for the list of
        {"name", "size", "sha256"} (see `file_part`), in the order given."""
        self = cls.__new__(cls)
        paths = list(paths)
        self._start(lambda stop: [file_part(p, stop) for p in paths])
        return self

    def _run(self, work: Any) -> None:
        try:
            self._result = work(self._stop)
        except BaseException as exc:  # handed to the caller in hexdigest() / parts()
            self._error = exc

    def _wait(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def hexdigest(self) -> str:
        """The digest of the one file (constructor)."""
        return self._wait()

    def parts(self) -> list[dict[str, Any]]:
        """The parts of the files (`of_files`)."""
        return self._wait()

    def __enter__(self) -> BackgroundSha256:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()  # never leave a thread reading a descriptor that is about to be closed


PENDING_SHA256 = "0" * 64  # schema-valid stand-in while the real digest is being computed


class OutputDigest:
    """sha256 of the file `fd` that is being written, computed on a helper thread as it grows.

    Call `written(end)` whenever the first `end` bytes are in the file (cheap: the thread is woken
    every STEP bytes), then `finish()` for the hex digest of the whole file, or `cancel()`. The digest
    is of the bytes in the file (read back from it): exactly the finished file's sha256, which `verify`
    recomputes. `fd` stays open and owned by the caller.
    """

    STEP = 16 << 20  # bytes written before the thread is woken: few wake-ups, and the page cache stays hot
    MAP = 64 << 20  # bytes hashed per mapping: bounds the pages this maps at once

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._cond = threading.Condition()
        self._written = self._signalled = self._done = 0
        self._closed = self._cancelled = False
        self._digest = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ckpt-convert-output-sha256", daemon=True)
        self._thread.start()

    def written(self, end: int) -> None:
        if end - self._signalled >= self.STEP:
            self._signalled = end
            with self._cond:
                self._written = end
                self._cond.notify()

    def finish(self) -> str:
        """Hash what is left up to the file's end; the hex digest of the whole file."""
        self._stop(os.fstat(self.fd).st_size, cancel=False)
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def cancel(self) -> None:
        self._stop(0, cancel=True)

    def _stop(self, end: int, cancel: bool) -> None:
        with self._cond:
            self._written = max(self._written, end)
            self._closed, self._cancelled = True, cancel
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._written <= self._done and not self._closed:
                        self._cond.wait()
                    if self._cancelled:
                        return
                    target, closed = self._written, self._closed
                if target > self._done:
                    self._hash(self._done, target)
                    self._done = target
                elif closed:
                    return
        except BaseException as exc:  # handed to the caller in finish()
            self._error = exc

    def _hash(self, start: int, end: int) -> None:
        while start < end:
            base = start - start % mmap.ALLOCATIONGRANULARITY
            length = min(end, base + self.MAP) - base
            with mmap.mmap(self.fd, length, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ, offset=base) as mapping, memoryview(mapping)[start - base:] as view:
                self._digest.update(view)
            start = base + length
