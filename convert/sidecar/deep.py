"""Depth of untrusted JSON, measured without recursion, and recursive work on it without RecursionError.

Parsing and schema validation (json, the compiled validator, jsonschema for error messages) recurse
once or several times per nesting level. Deep but bounded input is legitimate (a checkpoint may nest
200 containers, a few JSON levels each), so instead of failing at the interpreter's default limit,
`run_deep` runs such work on a helper thread with a large stack and a recursion limit sized to the
depth, which the caller has first bounded (`json_depth` with a documented maximum).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

SHALLOW = 60  # nesting this shallow runs inline, on the caller's thread
FRAMES_PER_LEVEL = 16  # Python frames per nesting level, with margin (jsonschema, the heaviest, needs ~7)
STACK_BYTES_PER_LEVEL = 48 << 10  # C stack per nesting level, with margin (generators recurse in C)
MIN_STACK, MAX_STACK = 16 << 20, 256 << 20  # reserved address space; pages are committed only when touched

_limit_lock = threading.Lock()
_raised = 0  # how many deep calls currently need the raised limit
_saved_limit = 0


def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of parsed JSON (a scalar is 0, `[]` is 1), iteratively; stops counting past `limit`.

    Args:
        value: parsed JSON (dicts, lists, scalars).
        limit: returns `limit + 1` as soon as the depth is known to exceed it.
    Returns:
        The depth, or `limit + 1`.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return limit + 1
        stack.extend((child, depth) for child in children if isinstance(child, (dict, list)))
    return deepest


def _raise_limit(frames: int) -> None:
    global _raised, _saved_limit
    with _limit_lock:
        if _raised == 0:
            _saved_limit = sys.getrecursionlimit()
        _raised += 1
        if sys.getrecursionlimit() < frames:
            sys.setrecursionlimit(frames)


def _restore_limit() -> None:
    global _raised
    with _limit_lock:
        _raised -= 1
        if _raised == 0:
            sys.setrecursionlimit(_saved_limit)


def run_deep(fn: Callable[..., T], *args: Any, depth: int) -> T:
    """`fn(*args)`, with room to recurse `depth` nesting levels: inline if shallow, else on a big-stack thread.

    Args:
        fn: the recursive work (its exceptions are re-raised here).
        depth: the nesting depth of its input, already bounded by the caller.
    Returns:
        What `fn` returns.
    """
    if depth <= SHALLOW:
        return fn(*args)
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed back to the caller's thread
            outcome.append((False, exc))

    stack = min(MAX_STACK, max(MIN_STACK, depth * STACK_BYTES_PER_LEVEL))
    _raise_limit(1000 + depth * FRAMES_PER_LEVEL)
    try:
        with _limit_lock:  # stack_size() applies to threads started from now on: set it just for this one
            old = threading.stack_size(stack)
            try:
                thread = threading.Thread(target=work, name="ckpt-convert-deep", daemon=True)
                thread.start()
            finally:
                threading.stack_size(old)
        thread.join()
    finally:
        _restore_limit()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
