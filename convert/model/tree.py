"""Walking checkpoint graphs safely: shared nodes stay shared, cycles are rebuilt, absurd depth is an error.

A pickle is a graph (its memo lets a value be reached twice, or contain itself). `transform` copies
one the way the unpickler built it: mutable containers and records are created empty and remembered
before their contents are visited, so a cycle comes back to the copy; tuples and frozensets are
built from their items, and one that was already built while its own items were visited (a cycle
through it, as in `t = ([],); t[0].append(t)`) is that earlier copy, as pickle's memo gives it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator
from typing import Any

from ..errors import MalformedCheckpoint, UnsupportedValue
from ..primitives.explicit_stack import drive
from .limits import LIMITS
from .paths import Field, format_path
from .records import ModuleRecord, ObjectRecord

TREE_DEPTH = LIMITS.tree_depth

CONTAINERS = (dict, collections.OrderedDict, list, tuple, set, frozenset)
_NODES = frozenset((*CONTAINERS, ObjectRecord, ModuleRecord))  # what `visit` may open as a generator

Special = Callable[[Any, Callable[[Any], Any]], Any]


def transform(root: Any, leaf: Callable[[Any], Any], special: Special | None = None) -> Any:
    """Rebuild the graph `root` with `leaf` applied to every value that is not a container or record.

    A node reached twice is converted once (identity, aliasing and cycles survive).
    `special(record, recurse)` may convert an ObjectRecord/ModuleRecord itself (return NotImplemented
    for the default: a copy of the record); its result is remembered once it returns.
    Iterative: containers being filled are generators on an explicit stack (see `_run`), so any depth
    up to TREE_DEPTH costs no Python frames; only a `special`'s own `recurse` starts one more stack.
    """
    memo: dict[int, Any] = {}
    keep_alive: list[Any] = []  # ids stay valid only while the originals live

    def visit(value: Any, depth: int, parent: tuple | None) -> Any:
        """`value` converted, or a generator that yields (child, depth, parent) and receives it converted."""
        key = id(value)
        if key in memo:
            return memo[key]
        if depth > TREE_DEPTH:
            raise MalformedCheckpoint(f"{format_path(_path(parent))}: checkpoint nests deeper than {TREE_DEPTH} levels")
        keep_alive.append(value)
        kind = type(value)
        if kind in CONTAINERS:
            return _container(value, kind, memo, depth + 1, parent, visit)
        if kind is ObjectRecord or kind is ModuleRecord:
            def recurse(v: Any, _d: int = depth + 1, _p: tuple | None = parent) -> Any:
                return drive(visit(v, _d, _p), visit)
            out = special(value, recurse) if special is not None else NotImplemented
            if out is NotImplemented:
                return _record(value, memo, depth + 1, parent)
            return memo.setdefault(key, out)
        try:
            out = memo[key] = leaf(value)
        except UnsupportedValue as exc:
            raise UnsupportedValue(f"{format_path(_path(parent))}: {exc}") from None
        return out

    try:
        return drive(visit(root, 0, None), visit)
    except RecursionError:  # only through a `special` that nests its own `recurse` calls
        raise MalformedCheckpoint("checkpoint nests too deeply") from None


Walk = Generator[tuple[Any, int, "tuple | None"], Any, Any]


def _container(value: Any, kind: type, memo: dict[int, Any], d: int, parent: tuple | None,
               visit: Callable[[Any, int, tuple | None], Any]) -> Walk:
    """Mutable kinds are remembered before their items (a cycle comes back to the copy); tuples and
    frozensets after, unless a cycle through them already built one while the items were visited.
    Leaves are visited in place (`visit` gives them back converted, never a generator)."""
    key = id(value)
    if kind is dict or kind is collections.OrderedDict:
        out = memo[key] = kind()
        for k, v in value.items():  # the key first, as pickle builds it
            new_key = (yield k, d, (parent, Field("<key>"))) if type(k) in _NODES else visit(k, d, (parent, Field("<key>")))
            out[new_key] = (yield v, d, (parent, k)) if type(v) in _NODES else visit(v, d, (parent, k))
        for name, attr in getattr(value, "__dict__", {}).items():
            out.__dict__[name] = yield attr, d, (parent, Field(name))
        return out
    if kind is list or kind is set:
        out = memo[key] = kind()
        add = out.append if kind is list else out.add
        for i, v in enumerate(value):
            add((yield v, d, (parent, i)) if type(v) in _NODES else visit(v, d, (parent, i)))
        return out
    items = []
    for i, v in enumerate(value):
        items.append((yield v, d, (parent, i)) if type(v) in _NODES else visit(v, d, (parent, i)))
    if key in memo:  # built while its items were visited: a cycle through it
        return memo[key]
    out = memo[key] = kind(items)
    return out


def _record(value: Any, memo: dict[int, Any], d: int, parent: tuple | None) -> Walk:
    if type(value) is ModuleRecord:
        state_dict = yield value.state_dict, d, parent
        return memo.setdefault(id(value), ModuleRecord(value.qualname, state_dict, value.tree))
    out = memo[id(value)] = ObjectRecord(value.qualname, via=value.via)
    out.args = yield value.args, d, parent
    out.state = yield value.state, d, parent
    out.dictitems = []
    for k, v in value.dictitems:
        new_key = yield k, d, parent
        out.dictitems.append((new_key, (yield v, d, parent)))
    out.listitems = []
    for v in value.listitems:
        out.listitems.append((yield v, d, parent))
    return out


def _path(parent: tuple | None) -> list:
    steps = []
    while parent is not None:
        parent, step = parent
        steps.append(step)
    return steps[::-1]
