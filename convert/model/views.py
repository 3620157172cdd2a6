"""The bounds check every strided view gets, on the read side and the load side alike."""

from __future__ import annotations

from typing import Any


def view_end(offset: int, shape: tuple | list, stride: tuple | list, itemsize: int) -> int:
    """One past the last byte a view (in elements of `itemsize`) can reach; 0 for empty views."""
    if len(shape) != len(stride):
        raise ValueError(f"shape {list(shape)} and stride {list(stride)} differ in rank")
    if any(s == 0 for s in shape):
        return 0
    last = offset + sum((s - 1) * st for s, st in zip(shape, stride))
    return (last + 1) * itemsize


def non_overlapping(shape: tuple | list, stride: tuple | list) -> bool:
    """True if no two elements of the view share memory (sufficient test: each dimension, by stride,
    steps past everything the smaller-stride dimensions reach)."""
    reach = 0
    for st, size in sorted((st, size) for size, st in zip(shape, stride) if size > 1):
        if st <= reach:
            return False
        reach += (size - 1) * st
    return True


def mark_view(mask: Any, offset: int, shape: list, stride: list, itemsize: int) -> None:
    """Set to 1 every byte of the uint8 tensor `mask` that the view (in elements of `itemsize`) covers."""
    if any(s == 0 for s in shape):
        return
    view = mask.as_strided([*shape, itemsize], [s * itemsize for s in stride] + [1], offset * itemsize)
    view.fill_(1)
