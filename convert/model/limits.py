"""Structural limits on what a pickle built, checked once right after it is read.

A pickle is a program: with the memo it can build a graph in which a value is reached many times
("billion laughs": each list holds the previous one twice) or a container holds itself. Both are
legitimate (omegaconf configs link every node back to its parent) and every later stage walks the
graph once per distinct node, writing shared values once, so neither costs more than the input.
What stays refused is depth: later stages recurse once per level, so the depth-first nesting of
the graph must stay well inside the interpreter's recursion limit. Checked here iteratively.
"""

from __future__ import annotations

import collections
from typing import Any

from ..errors import MalformedCheckpoint
from .records import ObjectRecord

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


def check_structure(root: Any) -> None:
    """Refuse graphs whose depth-first nesting (each distinct node entered once) exceeds MAX_DEPTH."""
    seen: set[int] = set()
    keep: list[Any] = []  # ids are only stable while the objects live
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        key = id(node)
        if key in seen or not (type(node) in _CONTAINERS or isinstance(node, ObjectRecord)):
            continue
        if depth >= MAX_DEPTH:
            raise MalformedCheckpoint(f"checkpoint nests deeper than {MAX_DEPTH} levels")
        seen.add(key)
        keep.append(node)
        stack.extend((child, depth + 1) for child in reversed(_children(node)))
