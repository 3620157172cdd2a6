"""Depth of untrusted JSON, measured without recursion.

The library never changes the interpreter's recursion limit (on Python 3.11 it is process-wide: raising
it would take RecursionError's protection from every other thread of the user's process). Work on deep
sidecars is iterative instead: parsing (sidecar/jsonio.py), schema validation (sidecar/schema_compiled.py)
and decoding (sidecar/codec.py). `json_depth` bounds the depth where a documented maximum applies.
"""

from __future__ import annotations

from typing import Any


def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of parsed JSON (a scalar is 0, `[]` is 1), iteratively; stops counting past `limit`.

    Args:
        value: parsed JSON (dicts, lists, scalars).
        limit: returns `limit + 1` as soon as the depth is known to exceed it.
    Returns:
        The depth, or `limit + 1`.
    """
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:  # one level at a time: a comprehension per level, no Python call per node
        depth += 1
        if depth > limit:
            return limit + 1
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
    return depth
