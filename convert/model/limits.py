"""The one limits table (`LIMITS`), and the structural check of what a pickle built, right after it is read.

Every bound on untrusted input the package applies is a field of `Limits`; modules read it from
`LIMITS` (a module-level name such as `MAX_DEPTH` elsewhere is only an alias of a field). The depths
are chained so that each later stage has room for what the earlier one accepted: a graph `depth`
levels deep becomes a tree at most `tree_depth` deep, a sidecar at most `encode_depth` codec levels
(read back within `decode_depth`) and `sidecar_json_depth` JSON levels. The stages walk them with
explicit stacks (tree.transform, the sidecar codec, inspect's renderer, compare_trees): no depth these
limits allow costs Python frames, and the library never changes the interpreter's recursion limit.

Structural limits on what a pickle built:

A pickle is a program: with the memo it can build a graph in which a value is reached many times
("billion laughs": each list holds the previous one twice) or a container holds itself. Both are
legitimate (omegaconf configs link every node back to its parent) and every later stage walks the
graph once per distinct node, writing shared values once, so neither costs more than the input.
What stays refused is depth, a documented bound every later stage is tested at (the live-object walk of
save_checkpoint still recurses, a few frames per level). Checked here iteratively.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedCheckpoint
from .records import ObjectRecord, TensorRef


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input (and on live objects given to save_checkpoint), in one place."""

    # Nesting. Real checkpoints nest a few dozen levels at most.
    depth: int = 200  # containers nested in a pickle's graph (the reader) or a live object (save_checkpoint)
    tree_depth: int = 400  # levels of the record tree built from it (objects add a level for their state)
    encode_depth: int = 400  # codec levels written into the sidecar
    decode_depth: int = 500  # codec levels read back from a sidecar
    sidecar_json_depth: int = 1000  # JSON nesting of checkpoint.json (each codec level is a few JSON levels)
    # Sizes and counts.
    sidecar_bytes: int = 1 << 30  # checkpoint.json, whatever the headers say
    sidecar_nodes: int = 5_000_000  # values written per sidecar (a graph is written once: a plain size bound)
    safetensors_header_bytes: int = 100_000_000  # the limit safetensors itself applies (MAX_HEADER_SIZE)
    ndim: int = 64  # dimensions of one tensor or array
    dim: int = 1 << 62  # elements along one dimension
    same_hash: int = 256  # unequal keys of one container allowed to share a hash
    pickle_member_bytes: int = 1 << 34  # a data.pkl beyond 16 GiB is not a checkpoint
    trailing_pickles: int = 1000  # concatenated pickles followed in one stream
    zip_entries: int = 1 << 20  # a checkpoint with a million members is not one
    deflate_ratio: int = 1100  # deflate cannot expand more than ~1032x: a member declaring more is a zip bomb
    scan_member_bytes: int = 1 << 30  # bytes of one decompressed member (or gzip content) scan reads at most


LIMITS = Limits()
MAX_DEPTH = LIMITS.depth
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set, frozenset)


def _children(value: Any) -> list[Any]:
    kind = type(value)
    if kind in (dict, collections.OrderedDict):
        out = [x for pair in value.items() for x in pair]
        attrs = getattr(value, "__dict__", None)
        return out + list(attrs.values()) if attrs else out
    if kind in (list, tuple, set, frozenset):
        return list(value)
    if isinstance(value, ObjectRecord):
        return [value.args, value.state, *(x for pair in value.dictitems for x in pair), *value.listitems]
    if type(value) is TensorRef:  # a tensor's attributes (its pickled __dict__): one more dict level
        return [value.attrs]
    return []


def check_structure(root: Any) -> None:
    """Refuse graphs whose depth-first nesting (each distinct node entered once) exceeds LIMITS.depth."""
    seen: set[int] = set()
    keep: list[Any] = []  # ids are only stable while the objects live
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        key = id(node)
        if key in seen or not (type(node) in _CONTAINERS or isinstance(node, ObjectRecord)
                               or (type(node) is TensorRef and node.attrs)):
            continue
        if depth >= MAX_DEPTH:
            raise MalformedCheckpoint(f"checkpoint nests deeper than {MAX_DEPTH} levels")
        seen.add(key)
        keep.append(node)
        stack.extend((child, depth + 1) for child in reversed(_children(node)))
