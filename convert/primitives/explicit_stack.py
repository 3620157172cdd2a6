"""Deep recursive work without recursion: generators driven as an explicit stack.

A walk over untrusted nested data (the planner's tree transform, the sidecar's encoder and decoder)
is written as one generator per container: it yields each child (as a tuple of arguments) and receives
the child's result back, in order, and returns the container's result. `drive` runs such generators
depth first on a list instead of the C stack, so the depth a walk can reach is set by its own limit,
never by the interpreter's recursion limit (which nothing here raises).
"""

from __future__ import annotations

from collections.abc import Callable
from types import GeneratorType
from typing import Any


def drive(top: Any, open_child: Callable[..., Any]) -> Any:
    """The result of `top`: a finished value, or a generator yielding argument tuples for `open_child`.

    `open_child(*child)` gives a finished value, or the generator of a container (pushed, then driven
    the same way). On an exception, the generators still on the stack are closed innermost first (their
    `finally` blocks run as they would have during recursion) and the exception propagates.
    """
    if type(top) is not GeneratorType:
        return top
    stack, sent = [top], None
    try:
        while True:
            try:
                child = stack[-1].send(sent)
            except StopIteration as done:
                stack.pop()
                if not stack:
                    return done.value
                sent = done.value
                continue
            sent = open_child(*child)
            if type(sent) is GeneratorType:
                stack.append(sent)
                sent = None
    except BaseException:
        for gen in reversed(stack):
            gen.close()
        raise
