"""The contiguous bytes of a tensor or numpy array described by the reader, bit-exact.

Contiguous tensors are zero-copy slices of the mmapped input. Strided views are gathered with
numpy as raw fixed-width records (void dtype of the element size), so NaN payloads and odd bit
patterns never pass through float arithmetic, and no torch is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import NUMPY_TO_DTYPE
from ..read.records import NdArrayRef, StorageRef, TensorRef
from ..read.torch_types import DType


def contiguous_strides(shape: tuple | list) -> tuple:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


def is_contiguous(shape: tuple, stride: tuple) -> bool:
    return all(size == 1 or st == want for size, st, want in zip(shape, stride, contiguous_strides(shape)))


def covers_storage(ref: TensorRef) -> bool:
    """True if the tensor is exactly its storage's bytes, in order: it can stand for the storage."""
    return ref.offset == 0 and is_contiguous(ref.shape, ref.stride) and ref.numel * ref.dtype.itemsize == ref.storage.nbytes


def nbytes(ref: TensorRef) -> int:
    return ref.numel * ref.dtype.itemsize


def contiguous_source(ref: TensorRef) -> tuple[Any, int] | None:
    """(buffer, byte offset) of the tensor's bytes in the input when it is contiguous there, else None."""
    storage = ref.storage
    if ref.numel == 0 or storage.buffer is None or not is_contiguous(ref.shape, ref.stride):
        return None
    return storage.buffer, storage.offset + ref.offset * ref.dtype.itemsize


def storage_source(storage: StorageRef) -> tuple[Any, int] | None:
    """(buffer, byte offset) of a whole storage's bytes in the input, else None."""
    if storage.nbytes == 0 or storage.buffer is None:
        return None
    return storage.buffer, storage.offset


def tensor_bytes(ref: TensorRef) -> memoryview:
    """The tensor's elements in row-major order, as raw bytes."""
    size = ref.dtype.itemsize
    if ref.numel == 0:
        return memoryview(b"")
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
