"""Streaming safetensors writer: header first, then each entry's bytes straight from the source.

Entries are laid out widest dtype first (as safetensors itself does) so every tensor starts on
a multiple of its element size (complex128 pairs on 16); the header is padded with spaces to 16 bytes.

Memory stays flat whatever the checkpoint size: an entry whose bytes sit as they are in an input
passed as `kernel_copy_source` is copied with pread/write through one small COPY_CHUNK buffer, not
copy_file_range: for the same CPU time, this leaves the output in the page cache as large folios,
which every later mapping of it (the digest's, the loader's) faults in 2-3x faster than the 4 KiB
pages a kernel copy makes. An entry whose source is a `ChunkedSource` (a live CUDA storage) is
staged through its bounded host buffer chunk by chunk; other entries come from `entry.data()` (one
tensor at a time) and pages of the input mapping touched on the way are handed back with MADV_DONTNEED.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import ConvertError, UnsupportedValue
from ..model.chunked import ChunkedSource
from ..model.dtypes import ITEMSIZE_BY_CODE
from ..model.limits import LIMITS
from ..primitives.copy_buffer import CopyBuffer
from ..primitives.mapping import release_pages
from .plan import Entry

CHUNK = 32 << 20  # bytes per write() from the input mapping: bounds the pages of it held at once
# Bytes per pread/write of a copied range: small enough to stay in the CPU's L2 cache between the read and the
# write (measured on a 2-core EPYC: 256-512 KiB cost the CPU time of copy_file_range, 1-8 MiB 3-5x more),
# large enough that the page cache gets large folios (a later mmap touch 2-3x faster than after copy_file_range).
COPY_CHUNK = 256 << 10



@dataclass(frozen=True)
class KernelCopySource:
    """The input file that `Entry.source` offsets refer to: `buffer` stands for the whole file `fd`.

    Entries whose `source` buffer is this `buffer` are copied from `fd` with pread (no mapping).
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
    if len(raw) > LIMITS.safetensors_header_bytes:  # safetensors (and the loader) would refuse to read the file
        raise UnsupportedValue(f"a safetensors header of {len(raw)} bytes (the tensors' names, dtypes and shapes) is "
                               f"over the {LIMITS.safetensors_header_bytes} bytes safetensors reads; use shorter names "
                               "or split the tensors over more files (--max-shard-size)")
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
            them: their bytes are copied from the file descriptor, never through a mapping.
        progress: called with the number of bytes in the file so far, after each entry and every
            COPY_CHUNK bytes of a copy (an `OutputDigest` hashes the file as it grows).
    """
    by_buffer = {id(s.buffer): s for s in _as_sequence(kernel_copy_source)}
    ordered = layout(entries)
    header = header_bytes(ordered, metadata)
    out.write(header)
    out.flush()  # from here on everything goes to the descriptor directly
    fd = out.fileno()
    position = len(header)
    copier = _Copier(fd, progress)
    for entry in ordered:
        _write_entry(fd, entry, by_buffer, position, copier)
        position += entry.nbytes
        if progress is not None:
            progress(position)


def _write_entry(fd: int, entry: Entry, by_buffer: dict[int, KernelCopySource], position: int,
                 copier: _Copier) -> None:
    if entry.nbytes and entry.source is not None:
        buffer, offset = entry.source
        source = by_buffer.get(id(buffer))
        if source is not None and buffer is source.buffer:
            copier.copy(source.fd, offset, entry.nbytes, position)
        elif isinstance(buffer, ChunkedSource):
            _write_chunks(fd, buffer, offset, entry.nbytes)
        elif hasattr(buffer, "fileno"):  # an input file read with pread (read.source.SourceBytes): no mapping
            copier.copy(buffer.fileno(), offset, entry.nbytes, position)
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


class _Copier:
    """Copies ranges of input files to the end of `fd` through one reusable buffer (allocated on first use)."""

    def __init__(self, fd: int, progress: Callable[[int], None] | None) -> None:
        self.fd, self.progress = fd, progress
        self._buffer: CopyBuffer | None = None

    def copy(self, src: int, offset: int, nbytes: int, position: int) -> None:
        """Copy nbytes of `src` from `offset`; `position` is the output's size before, for progress."""
        if self._buffer is None:
            self._buffer = CopyBuffer(COPY_CHUNK)
        view = self._buffer.view(offset, position)  # the distances stay the same as both ends advance
        done = 0
        while done < nbytes:
            part = view[:min(len(view), nbytes - done)]
            n = os.preadv(src, [part], offset + done)
            if n == 0:
                raise ConvertError("the input file shrank while it was being converted")
            _write_all(self.fd, part[:n])
            done += n
            if self.progress is not None:
                self.progress(position + done)


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
    first = start - start % mmap.PAGESIZE
    release_pages(buffer, first, min(end, len(buffer)) - first)


def _write_chunks(fd: int, source: ChunkedSource, offset: int, nbytes: int) -> None:
    written = 0
    for chunk in source.chunks(offset, nbytes):
        _write_all(fd, chunk)
        written += len(memoryview(chunk).cast("B"))
    if written != nbytes:  # a staging bug, never input-dependent: fail loudly
        raise AssertionError(f"staged {written} bytes, planned {nbytes}")
