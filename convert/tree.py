"""Walking checkpoint trees safely: shared nodes stay shared, cycles and absurd depth are errors."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from .errors import MalformedCheckpoint
from .read.records import ModuleRecord, ObjectRecord

MAX_DEPTH = 400

CONTAINERS = (dict, collections.OrderedDict, list, tuple, set, frozenset)


def transform(root: Any, leaf: Callable[[Any], Any], record: Callable[[Any, Callable[[Any], Any]], Any] | None = None) -> Any:
    """Rebuild `root` with `leaf` applied to every non-container value.

    A node reached twice (pickle memo) is converted once, so identity and aliasing survive;
    `record(value, recurse)` may handle ObjectRecord/ModuleRecord nodes itself.
    """
    memo: dict[int, Any] = {}
    active: set[int] = set()
    keep_alive: list[Any] = []  # ids stay valid only while the originals live

    def visit(value: Any, depth: int) -> Any:
        key = id(value)
        if key in memo:
            return memo[key]
        if depth > MAX_DEPTH:
            raise MalformedCheckpoint(f"checkpoint nests deeper than {MAX_DEPTH} levels")
        kind = type(value)
        if kind not in CONTAINERS and not isinstance(value, (ObjectRecord, ModuleRecord)):
            out = leaf(value)
        else:
            if key in active:
                raise MalformedCheckpoint("checkpoint contains a container that contains itself")
            active.add(key)
            def recurse(v: Any) -> Any:
                return visit(v, depth + 1)
            out = _rebuild(value, recurse, record)
            active.discard(key)
        memo[key] = out
        keep_alive.append(value)
        return out

    return visit(root, 0)


def _rebuild(value: Any, recurse: Callable[[Any], Any], record: Callable | None) -> Any:
    kind = type(value)
    if kind in (dict, collections.OrderedDict):
        out = kind((recurse(k), recurse(v)) for k, v in value.items())
        for name, attr in getattr(value, "__dict__", {}).items():
            out.__dict__[name] = recurse(attr)
        return out
    if kind in (list, tuple, set, frozenset):
        return kind(recurse(v) for v in value)
    if record is not None:
        return record(value, recurse)
    if isinstance(value, ModuleRecord):
        return ModuleRecord(value.qualname, recurse(value.state_dict), value.tree)
    return value.map(recurse)
