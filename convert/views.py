"""The bounds check every strided view gets, on the read side and the load side alike."""

from __future__ import annotations


def view_end(offset: int, shape: tuple | list, stride: tuple | list, itemsize: int) -> int:
    """One past the last byte a view (in elements of `itemsize`) can reach; 0 for empty views."""
    if len(shape) != len(stride):
        raise ValueError(f"shape {list(shape)} and stride {list(stride)} differ in rank")
    if any(s == 0 for s in shape):
        return 0
    last = offset + sum((s - 1) * st for s, st in zip(shape, stride))
    return (last + 1) * itemsize
