"""Streaming safetensors writer: header first, then each entry's bytes straight from the source.

Entries are laid out widest dtype first (as safetensors itself does) so every tensor starts on
a multiple of its element size (complex128 pairs on 16); the header is padded with spaces to 16 bytes.

Memory stays flat whatever the checkpoint size: an entry whose bytes sit as they are in an input
passed as `kernel_copy_source` is copied file-to-file by the kernel (copy_file_range, else
sendfile), never entering this process; an entry whose source is a `ChunkedSource` (a live CUDA
storage) is staged through its bounded host buffer chunk by chunk; other entries come from
`entry.data()` (one tensor at a time) and pages of the input mapping touched on the way are handed
back with MADV_DONTNEED.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..dtypes import ITEMSIZE_BY_CODE
from ..errors import ConvertError
from .chunked import ChunkedSource
from .plan import Entry

CHUNK = 32 << 20  # bytes per write() from the input mapping: bounds the pages of it held at once
KERNEL_CHUNK = 1 << 30  # bytes per copy_file_range/sendfile: small calls cost far more than their bytes
PROGRESS_STEP = 64 << 20  # with a progress callback, copies are reported at least this often
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM, errno.ETXTBSY}



@dataclass(frozen=True)
class KernelCopySource:
    """The input file that `Entry.source` offsets refer to: `buffer` is a mapping of the whole file `fd`.

    Entries whose `source` buffer is this `buffer` are copied from `fd` in the kernel.
    """

    buffer: Any
    fd: int


def layout(entries: list[Entry]) -> list[Entry]:
    # Widest first; among 8-byte entries those of a multiple of 16 bytes first, so complex128 storages
    # (stored as F64 pairs) start 16-aligned: complex<double> code faults on misaligned data.
    # Stable: plan order within a group.
    return sorted(entries, key=lambda e: (-ITEMSIZE_BY_CODE[e.code], e.nbytes % 16 != 0))


def header_bytes(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for entry in entries:
        header[entry.key] = {"dtype": entry.code, "shape": entry.shape, "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 16)  # data starts 16-aligned (see layout)
    return len(raw).to_bytes(8, "little") + raw


KernelCopySources = KernelCopySource | Sequence[KernelCopySource] | None


def write_safetensors(out: BinaryIO, entries: list[Entry], metadata: dict[str, str], *,
                      kernel_copy_source: KernelCopySources = None,
                      progress: Callable[[int], None] | None = None) -> None:
    """Write `entries` as one safetensors file to the open binary file `out` (left positioned at its end).

    Args:
        out: the file being written.
        entries: what goes in it, in plan order (laid out widest dtype first).
        metadata: the header's `__metadata__`.
        kernel_copy_source: the input file (or files: a DCP folder's rank files), if entries refer to
            them: their bytes are copied in the kernel.
        progress: called with the number of bytes in the file so far, after each entry and every
            PROGRESS_STEP bytes of a large copy (an `OutputDigest` hashes the file as it grows).
    """
    by_buffer = {id(s.buffer): s for s in _as_sequence(kernel_copy_source)}
    ordered = layout(entries)
    header = header_bytes(ordered, metadata)
    out.write(header)
    out.flush()  # from here on everything goes to the descriptor directly
    fd = out.fileno()
    position = len(header)
    for entry in ordered:
        _write_entry(fd, entry, by_buffer, position, progress)
        position += entry.nbytes
        if progress is not None:
            progress(position)


def _write_entry(fd: int, entry: Entry, by_buffer: dict[int, KernelCopySource], position: int,
                 progress: Callable[[int], None] | None) -> None:
    if entry.nbytes and entry.source is not None:
        buffer, offset = entry.source
        source = by_buffer.get(id(buffer))
        if source is not None and buffer is source.buffer:
            _copy_reporting(source.fd, offset, fd, entry.nbytes, position, progress)
        elif isinstance(buffer, ChunkedSource):
            _write_chunks(fd, buffer, offset, entry.nbytes)
        elif hasattr(buffer, "fileno"):  # an input file read with pread (read.source.SourceBytes): no mapping
            _copy_reporting(buffer.fileno(), offset, fd, entry.nbytes, position, progress)
        else:
            _write_mapped(fd, buffer, offset, entry.nbytes)
        return
    data = entry.data()
    if not isinstance(data, (bytes, bytearray, memoryview)):  # an iterator of consecutive byte pieces
        _write_pieces(fd, entry, data)
        return
    try:
        if len(data) != entry.nbytes:  # a planning bug, never input-dependent: fail loudly
            raise AssertionError(f"entry {entry.key!r}: produced {len(data)} bytes, planned {entry.nbytes}")
        _write_all(fd, data)
    finally:
        if isinstance(data, memoryview):
            data.release()
    for source in by_buffer.values():  # a strided gather may have read a whole storage through the mapping
        _drop_pages(source.buffer, 0, len(source.buffer))


def _copy_reporting(src: int, offset: int, dst: int, nbytes: int, position: int,
                    progress: Callable[[int], None] | None) -> None:
    """`_copy_file_range` in PROGRESS_STEP slices, reporting the file's size after each (if asked)."""
    step = nbytes if progress is None else PROGRESS_STEP
    for start in range(0, nbytes, step):
        n = min(step, nbytes - start)
        _copy_file_range(src, offset + start, dst, n)
        if progress is not None:
            progress(position + start + n)


def _as_sequence(sources: KernelCopySources) -> Sequence[KernelCopySource]:
    if sources is None:
        return ()
    return (sources,) if isinstance(sources, KernelCopySource) else sources


def _write_pieces(fd: int, entry: Entry, pieces: Iterable[Any]) -> None:
    """Write an entry whose bytes come piece by piece (a tensor reassembled from chunks): one piece in memory at a time."""
    done = 0
    for piece in pieces:
        try:
            done += len(piece)
            if done > entry.nbytes:
                raise AssertionError(f"entry {entry.key!r}: pieces exceed the {entry.nbytes} bytes planned")
            _write_all(fd, piece)
        finally:
            if isinstance(piece, memoryview):
                piece.release()
    if done != entry.nbytes:  # a planning bug, never input-dependent: fail loudly
        raise AssertionError(f"entry {entry.key!r}: produced {done} bytes, planned {entry.nbytes}")


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:done + CHUNK])
    finally:
        view.release()


def _write_mapped(fd: int, buffer: Any, offset: int, nbytes: int) -> None:
    """Write buffer[offset:offset + nbytes] in chunks, dropping the mapping's pages after each chunk."""
    view = memoryview(buffer)
    try:
        for start in range(offset, offset + nbytes, CHUNK):
            end = min(start + CHUNK, offset + nbytes)
            _write_all(fd, view[start:end])
            _drop_pages(buffer, start, end)
    finally:
        view.release()


def _drop_pages(buffer: Any, start: int, end: int) -> None:
    if isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        first = start - start % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            buffer.madvise(mmap.MADV_DONTNEED, first, min(end, len(buffer)) - first)


def _write_chunks(fd: int, source: ChunkedSource, offset: int, nbytes: int) -> None:
    written = 0
    for chunk in source.chunks(offset, nbytes):
        _write_all(fd, chunk)
        written += len(memoryview(chunk).cast("B"))
    if written != nbytes:  # a staging bug, never input-dependent: fail loudly
        raise AssertionError(f"staged {written} bytes, planned {nbytes}")


def _copy_file_range(src: int, offset: int, dst: int, nbytes: int) -> None:
    """Copy nbytes of `src` from `offset` to the current position of `dst`, in the kernel when possible."""
    end = offset + nbytes
    # copy_file_range first; sendfile where it is refused (across file systems on older kernels): both stay
    # in the kernel. Either advances dst's position, so a fallback continues where the previous one stopped.
    for kernel_copy in (lambda at, n: os.copy_file_range(src, dst, n, at), lambda at, n: os.sendfile(dst, src, at, n)):
        try:
            while offset < end:
                n = kernel_copy(offset, min(KERNEL_CHUNK, end - offset))
                if n == 0:
                    raise ConvertError("the input file shrank while it was being converted")
                offset += n
            return
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _NO_KERNEL_COPY:
                raise
    buf = bytearray(min(CHUNK, end - offset))
    view = memoryview(buf)
    while offset < end:
        n = os.preadv(src, [view[:min(len(buf), end - offset)]], offset)
        if n == 0:
            raise ConvertError("the input file shrank while it was being converted")
        _write_all(dst, view[:n])
        offset += n
