"""Walking checkpoint graphs safely: shared nodes stay shared, cycles are rebuilt, absurd depth is an error.

A pickle is a graph (its memo lets a value be reached twice, or contain itself). `transform` copies
one the way the unpickler built it: mutable containers and records are created empty and remembered
before their contents are visited, so a cycle comes back to the copy; tuples and frozensets are
built from their items, and one that was already built while its own items were visited (a cycle
through it, as in `t = ([],); t[0].append(t)`) is that earlier copy, as pickle's memo gives it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ..errors import MalformedCheckpoint, UnsupportedValue
from .limits import LIMITS
from .paths import Field, format_path
from .records import ModuleRecord, ObjectRecord

MAX_DEPTH = LIMITS.depth  # live objects (sources/live.py): the reader's bound, so save refuses what convert refuses
TREE_DEPTH = LIMITS.tree_depth

CONTAINERS = (dict, collections.OrderedDict, list, tuple, set, frozenset)

Special = Callable[[Any, Callable[[Any], Any]], Any]


def transform(root: Any, leaf: Callable[[Any], Any], special: Special | None = None) -> Any:
    """Rebuild the graph `root` with `leaf` applied to every value that is not a container or record.

    A node reached twice is converted once (identity, aliasing and cycles survive).
    `special(record, recurse)` may convert an ObjectRecord/ModuleRecord itself (return NotImplemented
    for the default: a copy of the record); its result is remembered once it returns.
    """
    memo: dict[int, Any] = {}
    keep_alive: list[Any] = []  # ids stay valid only while the originals live

    def visit(value: Any, depth: int, parent: tuple | None) -> Any:
        key = id(value)
        if key in memo:
            return memo[key]
        if depth > TREE_DEPTH:
            raise MalformedCheckpoint(f"{format_path(_path(parent))}: checkpoint nests deeper than {TREE_DEPTH} levels")
        keep_alive.append(value)
        kind = type(value)
        d = depth + 1
        if kind is dict or kind is collections.OrderedDict:
            out = memo[key] = kind()
            for k, v in value.items():
                out[visit(k, d, (parent, Field("<key>")))] = visit(v, d, (parent, k))
            for name, attr in getattr(value, "__dict__", {}).items():
                out.__dict__[name] = visit(attr, d, (parent, Field(name)))
            return out
        if kind is list:
            out = memo[key] = []
            for i, v in enumerate(value):
                out.append(visit(v, d, (parent, i)))
            return out
        if kind is set:
            out = memo[key] = set()
            for i, v in enumerate(value):
                out.add(visit(v, d, (parent, i)))
            return out
        if kind is tuple or kind is frozenset:
            items = [visit(v, d, (parent, i)) for i, v in enumerate(value)]
            if key in memo:  # built while its items were visited: a cycle through it
                return memo[key]
            out = memo[key] = kind(items)
            return out
        if kind is ObjectRecord or kind is ModuleRecord:
            def recurse(v: Any, _d: int = d, _p: tuple | None = parent) -> Any:
                return visit(v, _d, _p)
            out = special(value, recurse) if special is not None else NotImplemented
            if out is NotImplemented:
                out = _record(value, memo, recurse)
            return memo.setdefault(key, out)
        try:
            out = memo[key] = leaf(value)
        except UnsupportedValue as exc:
            raise UnsupportedValue(f"{format_path(_path(parent))}: {exc}") from None
        return out

    try:
        return visit(root, 0, None)
    except RecursionError:
        raise MalformedCheckpoint("checkpoint nests too deeply") from None


def _record(value: Any, memo: dict[int, Any], recurse: Callable[[Any], Any]) -> Any:
    if type(value) is ModuleRecord:
        return ModuleRecord(value.qualname, recurse(value.state_dict), value.tree)
    out = memo[id(value)] = ObjectRecord(value.qualname, via=value.via)
    out.args = recurse(value.args)
    out.state = recurse(value.state)
    out.dictitems = [(recurse(k), recurse(v)) for k, v in value.dictitems]
    out.listitems = [recurse(v) for v in value.listitems]
    return out


def _path(parent: tuple | None) -> list:
    steps = []
    while parent is not None:
        parent, step = parent
        steps.append(step)
    return steps[::-1]
