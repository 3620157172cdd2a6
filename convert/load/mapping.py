"""A private (copy-on-write) mapping of a whole file that holds no file descriptor.

CPython's `mmap.mmap` keeps a duplicate of the descriptor for as long as the mapping lives (until
3.13's `trackfd=False`), so a loaded folder of N shards would hold N descriptors and fail at
`ulimit -n`. The kernel needs no descriptor to keep a mapping: on Linux the mapping is made with
libc's mmap through ctypes, and exposed as a ctypes byte array (buffer protocol, writable: torch
and numpy views share it). It is unmapped when the last object viewing it is gone (a finalizer on
the array, which every view keeps alive), never while a tensor still points into it.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import weakref
from typing import Any

_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        _libc = None
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_private(fd: int, size: int) -> Any:
    """The whole file `fd` (of `size` > 0 bytes) mapped copy-on-write; the caller may close `fd` at once."""
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY, trackfd=False)
    if _libc is None:  # elsewhere: CPython's mmap (it keeps a descriptor)
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if addr in (None, _MAP_FAILED):
        code = ctypes.get_errno()
        raise OSError(code, f"cannot map the file: {__import__('os').strerror(code)}")
    array = (ctypes.c_ubyte * size).from_address(addr)
    weakref.finalize(array, _libc.munmap, addr, size)
    return array


def release_pages(buffer: Any, start: int, length: int) -> None:
    """Hand the pages of `buffer[start:start + length]` back (MADV_DONTNEED), if the OS can; `start` page-aligned."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    if isinstance(buffer, mmap.mmap):
        try:
            buffer.madvise(mmap.MADV_DONTNEED, start, length)
        except (OSError, ValueError):
            pass
    elif _libc is not None and isinstance(buffer, ctypes.Array):
        _libc.madvise(ctypes.addressof(buffer) + start, length, mmap.MADV_DONTNEED)
