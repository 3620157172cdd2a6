"""The contiguous bytes of a tensor or numpy array described by the reader, bit-exact.

Contiguous tensors are zero-copy slices of the mmapped input. Strided views are gathered with
numpy as raw fixed-width records (void dtype of the element size), so NaN payloads and odd bit
patterns never pass through float arithmetic, and no torch is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .dtypes import NUMPY_TO_DTYPE
from .records import NdArrayRef, StorageRef, TensorRef
from .strides import is_contiguous
from .torch_types import DType


def covers_storage(ref: TensorRef) -> bool:
    """True if the tensor is exactly its storage's bytes, in order: it can stand for the storage."""
    return ref.offset == 0 and is_contiguous(ref.shape, ref.stride) and ref.numel * ref.dtype.itemsize == ref.storage.nbytes


def dense_span(ref: TensorRef) -> tuple[int, int] | None:
    """The byte range [start, end) of its storage a tensor covers exactly once, if its view is dense.

    Dense: the strides (dims of size 1 aside) are a permutation of contiguous strides, so the view
    touches every element of one range once (a transpose, a contiguous slice); None otherwise.
    """
    if ref.numel == 0:
        return None
    expect = 1
    for stride, size in sorted((st, sz) for sz, st in zip(ref.shape, ref.stride) if sz != 1):
        if stride != expect:
            return None
        expect *= size
    size = ref.dtype.itemsize
    return ref.offset * size, (ref.offset + ref.numel) * size


def nbytes(ref: TensorRef) -> int:
    return ref.numel * ref.dtype.itemsize


def contiguous_source(ref: TensorRef) -> tuple[Any, int] | None:
    """(buffer, byte offset) of the tensor's bytes in the input when it is contiguous there, else None."""
    storage = ref.storage
    if ref.numel == 0 or storage.buffer is None or not is_contiguous(ref.shape, ref.stride):
        return None
    return storage.buffer, storage.offset + ref.offset * ref.dtype.itemsize


def storage_source(storage: StorageRef, start: int = 0) -> tuple[Any, int] | None:
    """(buffer, byte offset) of a storage's bytes from `start` on in the input, else None."""
    if storage.nbytes == 0 or storage.buffer is None:
        return None
    return storage.buffer, storage.offset + start


def _coverage(storage: StorageRef, refs: list[TensorRef]) -> np.ndarray:
    """A uint8 mask over the storage's bytes: 1 where one of the views reads (the reader checked each
    view lies inside the storage)."""
    mask = np.zeros(storage.nbytes, dtype=np.uint8)
    for ref in refs:
        if ref.numel == 0:
            continue
        size = ref.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(mask[ref.offset * size:], shape=[*ref.shape, size],
                                               strides=[s * size for s in ref.stride] + [1])
        view[...] = 1
    return mask


def covered_bytes(storage: StorageRef, refs: list[TensorRef]) -> int:
    """How many bytes of the storage the views read (views checked inside it by the reader)."""
    return int(_coverage(storage, refs).sum())


def uncovered_bytes(storage: StorageRef, refs: list[TensorRef]) -> memoryview:
    """The bytes of the storage that none of the views read, in storage order."""
    mask = _coverage(storage, refs)
    if not storage.nbytes:
        return memoryview(b"")
    data = np.frombuffer(storage.data(), dtype=np.uint8)
    return memoryview(data[mask == 0]).cast("B")


def tensor_bytes(ref: TensorRef) -> memoryview | Iterator[Any]:
    """The tensor's elements in row-major order, as raw bytes (or, for a storage made of pieces
    that the tensor covers, an iterator of consecutive byte pieces: the writer streams those)."""
    size = ref.dtype.itemsize
    if ref.numel == 0:
        return memoryview(b"")
    if ref.storage.pieces is not None and covers_storage(ref):
        return ref.storage.pieces()
    data = ref.storage.data()
    if is_contiguous(ref.shape, ref.stride):
        start = ref.offset * size
        return data[start:start + ref.numel * size]
    usable = len(data) - len(data) % size
    elements = np.frombuffer(data, dtype=np.uint8, count=usable).view(np.dtype(f"V{size}"))
    # the reader checked that every element the view reaches lies inside the storage
    view = np.lib.stride_tricks.as_strided(elements[ref.offset:], shape=ref.shape,
                                           strides=[s * size for s in ref.stride], writeable=False)
    return memoryview(np.ascontiguousarray(view).reshape(-1).view(np.uint8)).cast("B")


def ndarray_little_endian(ref: NdArrayRef) -> np.ndarray:
    """The array in C order and little-endian byte order (what safetensors stores)."""
    dtype = np.dtype(ref.dtype)
    array = np.frombuffer(ref.data, dtype=dtype) if len(ref.data) else np.empty(0, dtype=dtype)
    array = array.reshape(ref.shape, order="F" if ref.fortran else "C")
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def ndarray_bytes(ref: NdArrayRef) -> memoryview:
    return memoryview(ndarray_little_endian(ref).reshape(-1)).cast("B")


def ndarray_dtype(ref: NdArrayRef) -> DType:
    return NUMPY_TO_DTYPE[ref.dtype[1:]]
