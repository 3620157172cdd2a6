"""Row-major (C-contiguous) strides: the one definition the model, the writer and the loader share."""

from __future__ import annotations

from collections.abc import Sequence


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides, in elements, of a row-major tensor of `shape` (a size-0 dimension counts as 1, as in torch)."""
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


def is_contiguous(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """Whether `stride` lays `shape` out row-major (the stride of a size-1 dimension does not matter)."""
    want = contiguous_strides(shape)
    if tuple(stride) == want:  # the common case, without a generator
        return True
    return len(stride) == len(want) and all(size == 1 or st == w for size, st, w in zip(shape, stride, want))
