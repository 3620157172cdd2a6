"""Do a tensor's saved chunks tile it exactly once? Checked in O(n log n) for the layouts DCP writes.

DCP saves a tensor as boxes (offsets, sizes) of the whole. The check splits the tensor recursively
along cut planes that no box crosses (every layout a sharding produces — rows, columns, grids of
shards, uneven last shards — is such a "guillotine" partition) and requires each region to end as
exactly one box. Each split sorts the region's boxes once per dimension, and the total work is
budgeted: a hostile layout that would need more (deep staircases of single boxes) is refused as
too complex instead of costing quadratic time. Pure Python, no torch.
"""

from __future__ import annotations

import math

Boxes = list[tuple[tuple[int, ...], tuple[int, ...]]]
WORK_PER_BOX = 16  # box visits allowed per box and dimension before a layout counts as too complex


def tiling_problem(shape: tuple[int, ...], boxes: Boxes) -> str | None:
    """Why `boxes` ((offsets, sizes) pairs) do not tile `shape` exactly once, or None if they do."""
    for offsets, sizes in boxes:
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            return f"a chunk with offsets {list(offsets)} and sizes {list(sizes)} does not have the tensor's {len(shape)} dims"
        if any(o + s > n for o, s, n in zip(offsets, sizes, shape)):
            return f"the chunk at offsets {list(offsets)} with sizes {list(sizes)} reaches outside the shape {list(shape)}"
    full = [b for b in boxes if all(s > 0 for s in b[1])]
    covered, total = sum(math.prod(s) for _, s in full), math.prod(shape)
    if covered > total:
        return f"the chunks cover {covered} elements of its {total}: chunks overlap"
    if covered < total:
        return f"the chunks cover {covered} of its {total} elements (a gap)"
    if not full:
        return None
    budget = WORK_PER_BOX * len(full) * (len(shape) + 1) + 64
    regions = [(full, (0,) * len(shape), tuple(shape))]
    while regions:
        group, lo, hi = regions.pop()
        if len(group) == 1:
            offsets, sizes = group[0]
            if offsets != lo or tuple(o + s for o, s in zip(offsets, sizes)) != hi:
                return f"the chunks leave a gap next to the chunk at offsets {list(offsets)}"
            continue
        for dim in range(len(shape)):
            budget -= len(group)
            if budget < 0:
                return f"its {len(full)} chunks are not laid out as a grid of shards (too complex to check)"
            slabs = _slabs(group, dim)
            if len(slabs) > 1:
                for slab_lo, slab_hi, members in slabs:
                    regions.append((members, (*lo[:dim], slab_lo, *lo[dim + 1:]), (*hi[:dim], slab_hi, *hi[dim + 1:])))
                break
        else:  # no plane in any dimension separates them: two of them meet (equal volumes: and a gap elsewhere)
            a, b = sorted(group)[:2]
            return f"the chunks at offsets {list(a[0])} and {list(b[0])} overlap or do not form a grid"
    return None


def _slabs(group: Boxes, dim: int) -> list[tuple[int, int, Boxes]]:
    """`group` split at every plane across `dim` that no box crosses: (start, end, boxes) per slab."""
    ordered = sorted(group, key=lambda b: b[0][dim])
    slabs: list[tuple[int, int, Boxes]] = []
    start, end, members = ordered[0][0][dim], -1, []
    for box in ordered:
        if members and box[0][dim] >= end:
            slabs.append((start, end, members))
            start, members = box[0][dim], []
        members.append(box)
        end = max(end, box[0][dim] + box[1][dim])
    slabs.append((start, end, members))
    return slabs
