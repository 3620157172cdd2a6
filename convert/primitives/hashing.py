"""sha256 of the input file (provenance), computed on a thread while the conversion runs.

Hashing reads the file with pread into one small reusable buffer, so it adds nothing to the
process's memory (hashing the mmap would fault the whole file into RSS). sha256 and pread both
release the GIL, so on a machine with two cores the hash costs no wall time next to the copy.
"""

from __future__ import annotations

import hashlib
import os
import threading

from ..errors import ConvertError

CHUNK = 4 << 20


def sha256_fd(fd: int, size: int, stop: threading.Event | None = None, path: os.PathLike | str | None = None) -> str:
    """The sha256 hex digest of the first `size` bytes of the open file `fd` (its position is not used).

    Args:
        fd: an open file descriptor.
        size: how many bytes to hash (the file's size when it was opened).
        stop: set it to cancel (raises InterruptedError).
        path: the file's name for errors: given, an I/O error or a file that shrank is a ConvertError
            naming it; otherwise an OSError.
    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    buf = bytearray(min(CHUNK, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    try:
        while offset < size:
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing cancelled")
            n = os.preadv(fd, [view[:min(len(buf), size - offset)]], offset)
            if n == 0:
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


class BackgroundSha256:
    """Start hashing `fd` now; `hexdigest()` waits for it. Use as a context manager (cancels on exit).

    Errors reading the file are ConvertErrors naming `path` (see `sha256_fd`).
    """

    def __init__(self, fd: int, size: int, path: os.PathLike | str | None = None) -> None:
        self._stop = threading.Event()
        self._result: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fd, size, path), name="ckpt-convert-sha256",
                                        daemon=True)
        self._thread.start()

    def _run(self, fd: int, size: int, path: os.PathLike | str | None) -> None:
        try:
            self._result = sha256_fd(fd, size, self._stop, path)
        except BaseException as exc:  # handed to the caller in hexdigest()
            self._error = exc

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __enter__(self) -> BackgroundSha256:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()  # never leave a thread reading a descriptor that is about to be closed


PENDING_SHA256 = "0" * 64  # schema-valid stand-in while the real digest is being computed
