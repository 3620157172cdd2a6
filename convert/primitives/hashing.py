"""The one sha256 hasher: of an open file's byte range, of a path, of a mapping; and on a thread.

Every sha256 of a file in the package goes through here (provenance of inputs, digests of written
data files, verify). A file's digest is computed on a thread while the conversion runs
(`BackgroundSha256`, or `BackgroundSha256.of_files` for a folder's several inputs).

Hashing reads the file with pread into one small reusable buffer, so it adds nothing to the
process's memory (hashing the mmap would fault the whole file into RSS). sha256 and pread both
release the GIL, so on a machine with two cores the hash costs no wall time next to the copy.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from .mapping import release_pages

CHUNK = 4 << 20


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
    buf = bytearray(CHUNK if size is None else min(CHUNK, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    try:
        while size is None or offset < size:
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing cancelled")
            n = os.preadv(fd, [view if size is None else view[:min(len(buf), size - offset)]], offset)
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
    """The sha256 hex digest of the whole file at `path` (opened read-only, never followed as a FIFO's reader)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return sha256_fd(fd, os.fstat(fd).st_size, stop)
    finally:
        os.close(fd)


def sha256_mapping(buffer: Any) -> str:
    """sha256 of a whole mapping (None: empty); pages of an mmap are handed back after each chunk (RSS stays flat)."""
    digest = hashlib.sha256()
    if buffer is None:
        return digest.hexdigest()
    view = memoryview(buffer)
    try:
        for start in range(0, len(view), CHUNK):
            digest.update(view[start:start + CHUNK])
            release_pages(buffer, start, min(CHUNK, len(view) - start))
    finally:
        view.release()
    return digest.hexdigest()


def file_part(path: Path, stop: threading.Event | None = None) -> dict[str, Any]:
    """{"name", "size", "sha256"} of the file at `path` (a provenance part)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        size = os.fstat(fd).st_size
        return {"name": path.name, "size": size, "sha256": sha256_fd(fd, size, stop, path)}
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
