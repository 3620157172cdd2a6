"""Structural limits on what a pickle built, checked once right after it is read.

A pickle is a program: with the memo it can build a small graph that expands to an astronomic tree
("billion laughs": each list holds the previous one twice), or a container that holds itself.
Every later stage walks the tree, so the expanded size is computed here first, in time linear in
the number of *distinct* nodes, and absurd inputs are refused before anything else touches them.
"""

from __future__ import annotations

import collections
from typing import Any

from ..errors import MalformedCheckpoint
from .records import ObjectRecord

MAX_EXPANDED_VALUES = 5_000_000  # the writer's own bound; refusing here is just much faster
# Later stages recurse once per level (several Python frames each): stay well inside the interpreter's
# recursion limit. Real checkpoints nest a few dozen levels at most.
MAX_DEPTH = 200
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
    return []


def check_structure(root: Any, max_values: int = MAX_EXPANDED_VALUES) -> None:
    """Refuse trees that expand to more than `max_values` values, nest deeper than MAX_DEPTH or contain themselves."""
    size: dict[int, int] = {}  # id -> expanded size, for finished nodes
    on_path: set[int] = set()
    keep: list[Any] = []  # ids are only stable while the objects live
    stack: list[tuple[Any, list[Any] | None]] = [(root, None)]
    while stack:
        node, children = stack[-1]
        key = id(node)
        if children is None:
            if key in size:
                stack.pop()
                continue
            if not (type(node) in _CONTAINERS or isinstance(node, ObjectRecord)):
                size[key] = 1
                keep.append(node)
                stack.pop()
                continue
            if key in on_path:
                raise MalformedCheckpoint("checkpoint contains a container that contains itself")
            on_path.add(key)
            if len(on_path) > MAX_DEPTH:
                raise MalformedCheckpoint(f"checkpoint nests deeper than {MAX_DEPTH} levels")
            children = _children(node)
            stack[-1] = (node, children)
            for child in children:
                if id(child) not in size:
                    if id(child) in on_path:
                        raise MalformedCheckpoint("checkpoint contains a container that contains itself")
                    stack.append((child, None))
            continue
        total = 1 + sum(size[id(c)] for c in children)
        if total > max_values:
            raise MalformedCheckpoint(f"checkpoint expands to more than {max_values} values (shared containers "
                                      "repeated too often); refusing")
        size[key] = total
        keep.append(node)
        on_path.discard(key)
        stack.pop()
