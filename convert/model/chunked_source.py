"""The bytes of a tensor saved as several boxes (DCP chunks), produced in row-major order, piece by piece.

A tensor split across ranks is stored as boxes: each has offsets and sizes in the whole tensor and
its own strided elements in some input file. `tensor_pieces` walks the whole tensor in slabs of at
most `block_bytes` (whole rows of the innermost dimensions that fit) and, for each slab, either hands
out the input's bytes as they are (the slab lies inside one box, contiguously: the usual dim-0 split)
or copies the parts of each box that meet the slab into one block buffer (splits along other dims).
Memory stays at one block plus the input pages of one slab, which are handed back after each slab.
Copies go through uint8 views, so every bit pattern (NaN payloads included) survives.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .strides import is_contiguous

BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class Box:
    """One saved part of a tensor: its place in the whole tensor and where its elements are.

    Element `i` of the box (a multi-index) is at byte `byte_offset + itemsize * sum(i[d] * strides[d])`
    of `buffer` (an input file read with pread — a `read.source.SourceBytes` — or bytes).
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    buffer: Any
    byte_offset: int
    strides: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


class _Buffers:
    """uint8 tensors over the input buffers (created once), and handing their pages back."""

    def __init__(self) -> None:
        self._tensors: dict[int, tuple[Any, np.ndarray]] = {}

    def tensor(self, buffer: Any) -> np.ndarray:
        found = self._tensors.get(id(buffer))
        if found is None:  # a read-only uint8 array over the mapping (numpy: no torch on the convert path)
            found = self._tensors[id(buffer)] = (buffer, np.frombuffer(buffer, dtype=np.uint8))
        return found[1]

    @staticmethod
    def release(buffer: Any, start: int, end: int) -> None:
        if isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED") and end > start:
            first = start - start % mmap.PAGESIZE
            with contextlib.suppress(OSError, ValueError):
                buffer.madvise(mmap.MADV_DONTNEED, first, min(end, len(buffer)) - first)


def _span(box: Box, lo: int, hi: int, k: int, prefix: tuple[int, ...], itemsize: int) -> tuple[int, list, list, int]:
    """Element offset, shape and strides (in bytes, with a trailing itemsize dim) of the part of `box`
    at `prefix` (whole-tensor indices of dims < k) and rows [lo, hi) of dim k; and its last byte + 1."""
    start = sum((p - o) * st for p, o, st in zip(prefix, box.offsets, box.strides))
    start += (lo - box.offsets[k]) * box.strides[k]
    sizes = [hi - lo, *box.sizes[k + 1:]]
    strides = list(box.strides[k:])
    first = box.byte_offset + start * itemsize
    last = first + (sum((s - 1) * st for s, st in zip(sizes, strides)) + 1) * itemsize
    return first, [*sizes, itemsize], [st * itemsize for st in strides] + [1], last


def _window(buffer: Any, first: int, last: int) -> memoryview:
    """Bytes [first, last) of a box's buffer: read with pread from a file (`read.source.SourceBytes`: never
    mapped, so a file truncated underneath is a clean error, not SIGBUS), or a view of bytes in memory."""
    if hasattr(buffer, "read"):
        return memoryview(buffer.read(first, last - first))
    return memoryview(buffer)[first:last]


def tensor_pieces(shape: tuple[int, ...], itemsize: int, boxes: list[Box],
                  block_bytes: int = BLOCK_BYTES) -> Iterator[memoryview]:
    """The tensor's bytes in row-major order, as consecutive pieces of at most about `block_bytes`.

    `boxes` must tile `shape` exactly (see `read/dcp_tiling.py`). A piece is only valid until the next one
    is asked for: its input pages are handed back then, and a copied slab's buffer is reused.
    """
    numel = math.prod(shape)
    if numel == 0:
        return
    if not shape:  # a 0-d tensor: one element, one box
        box = boxes[0]
        yield _window(box.buffer, box.byte_offset, box.byte_offset + itemsize)
        return
    buffers = _Buffers()
    inner = [math.prod(shape[d + 1:]) * itemsize for d in range(len(shape))]
    k = next((d for d in range(len(shape)) if inner[d] <= block_bytes), len(shape) - 1)  # slabs are rows of dim k
    rows = max(1, block_bytes // inner[k])
    live = [b for b in boxes if b.numel > 0]
    scratch: np.ndarray | None = None
    for prefix in itertools.product(*(range(n) for n in shape[:k])):
        at_prefix = [b for b in live if all(o <= p < o + s for p, o, s in zip(prefix, b.offsets, b.sizes))]
        for lo in range(0, shape[k], rows):
            hi = min(lo + rows, shape[k])
            meeting = [b for b in at_prefix if b.offsets[k] < hi and lo < b.offsets[k] + b.sizes[k]]
            touched: list[tuple[Any, int, int]] = []
            whole = meeting[0] if len(meeting) == 1 else None
            if (whole is not None and whole.offsets[k] <= lo and hi <= whole.offsets[k] + whole.sizes[k]
                    and whole.sizes[k + 1:] == shape[k + 1:] and is_contiguous(whole.sizes[k:], whole.strides[k:])):
                first, _, _, last = _span(whole, lo, hi, k, prefix, itemsize)
                yield _window(whole.buffer, first, last)
                touched.append((whole.buffer, first, last))
            else:
                if scratch is None:  # one buffer for every slab: freed-and-reallocated blocks fragment the heap
                    scratch = np.empty((rows, *shape[k + 1:], itemsize), dtype=np.uint8)
                block = scratch[:hi - lo]
                for box in meeting:
                    b_lo, b_hi = max(lo, box.offsets[k]), min(hi, box.offsets[k] + box.sizes[k])
                    first, sizes, strides, last = _span(box, b_lo, b_hi, k, prefix, itemsize)
                    base = (np.frombuffer(box.buffer.read(first, last - first), dtype=np.uint8)
                            if hasattr(box.buffer, "read") else buffers.tensor(box.buffer)[first:])
                    source = np.lib.stride_tricks.as_strided(base, shape=sizes, strides=strides, writeable=False)
                    target = block[(slice(b_lo - lo, b_hi - lo),
                                    *(slice(o, o + s) for o, s in zip(box.offsets[k + 1:], box.sizes[k + 1:])))]
                    target[...] = source
                    touched.append((box.buffer, first, last))
                yield memoryview(block).cast("B")
            for buffer, first, last in touched:
                buffers.release(buffer, first, last)
