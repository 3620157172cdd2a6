"""The contiguous bytes of a tensor or numpy array described by the reader, bit-exact.

Contiguous tensors are zero-copy slices of the mmapped input. Strided views are gathered with
torch on an integer dtype of the same width, so NaN payloads and odd bit patterns never pass
through float arithmetic.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..dtypes import NUMPY_TO_TORCH
from ..read.records import NdArrayRef, StorageRef, TensorRef
from ..views import mark_view

_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def contiguous_strides(shape: tuple | list) -> tuple:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


def is_contiguous(shape: tuple, stride: tuple) -> bool:
    if tuple(stride) == contiguous_strides(shape):  # the common case, without a generator
        return True
    return all(size == 1 or st == want for size, st, want in zip(shape, stride, contiguous_strides(shape)))


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


def _coverage(storage: StorageRef, refs: list[TensorRef]) -> torch.Tensor:
    """A uint8 mask over the storage's bytes: 1 where one of the views reads."""
    mask = torch.zeros(storage.nbytes, dtype=torch.uint8)
    for ref in refs:
        mark_view(mask, ref.offset, list(ref.shape), list(ref.stride), ref.dtype.itemsize)
    return mask


def covered_bytes(storage: StorageRef, refs: list[TensorRef]) -> int:
    """How many bytes of the storage the views read (views checked inside it by the reader)."""
    return int(_coverage(storage, refs).sum())


def uncovered_bytes(storage: StorageRef, refs: list[TensorRef]) -> memoryview:
    """The bytes of the storage that none of the views read, in storage order."""
    mask = _coverage(storage, refs)
    with warnings.catch_warnings():  # the mmap is read-only; we only read through this tensor
        warnings.simplefilter("ignore", UserWarning)
        data = torch.frombuffer(storage.data(), dtype=torch.uint8) if storage.nbytes else torch.empty(0, dtype=torch.uint8)
    return memoryview(data[mask == 0].numpy()).cast("B")


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
    with warnings.catch_warnings():  # the mmap is read-only; we only read through this tensor
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(data, dtype=torch.uint8, count=usable)
    shape, stride, offset = list(ref.shape), list(ref.stride), ref.offset
    if size == 16:  # complex128: two int64 words per element
        words = raw.view(torch.int64)
        shape, stride, offset = [*shape, 2], [s * 2 for s in stride] + [1], offset * 2
    else:
        words = raw.view(_SAME_WIDTH_INT[size])
    gathered = words.as_strided(shape, stride, offset).contiguous()
    return memoryview(gathered.numpy()).cast("B")


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


def ndarray_torch_dtype(ref: NdArrayRef) -> torch.dtype:
    return NUMPY_TO_TORCH[ref.dtype[1:]]
