"""SIGTERM as an exception, for the span of a `with`: a terminated run unwinds (and cleans up) as on Ctrl-C.

The handler is installed only on the main thread (elsewhere signals are left alone) and the previous one
is put back on exit, so the process's signal disposition is unchanged after the call.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds (and cleans up) as on Ctrl-C."""


@contextlib.contextmanager
def sigterm_raises(exc_type: type[BaseException] = Terminated) -> Iterator[None]:
    """Within the block, SIGTERM raises `exc_type` once; a second SIGTERM is ignored (it must not cut the
    cleanup short)."""
    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise exc_type

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (called from a thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
