"""Dict and set keys that all hash alike: refused before they make building a container quadratic.

Python's str and bytes hashes are randomised per process, but an int's hash is the int modulo 2**61 - 1
(and tuples of ints, floats, ... hash from their items): a pickle or a sidecar can hold thousands of
unequal keys with one hash (`k * (2**61 - 1)`), and each insertion then probes every key before it —
quadratic time in the reader, and again in the loader. Real checkpoints have no such keys. Batches of
keys are counted by hash before they are inserted; containers filled one key at a time are recounted
at sizes 1024, 2048, 4096, ... (amortised O(1) per key, at most CHECK_FROM keys inserted unchecked).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import MalformedCheckpoint
from .limits import LIMITS

MAX_SAME_HASH = LIMITS.same_hash  # unequal keys of one container allowed to share a hash
CHECK_FROM = 1024  # containers are recounted when their size reaches a power of two from here


def check_keys(keys: Iterable[Any], where: str) -> None:
    """MalformedCheckpoint if more than MAX_SAME_HASH of `keys` (str and bytes aside) share one hash."""
    counts: dict[int, int] = {}  # keyed by hash values: distinct ints with distinct hashes, no collisions here
    for key in keys:
        if type(key) is str or type(key) is bytes:
            continue
        h = hash(key)
        n = counts[h] = counts.get(h, 0) + 1
        if n > MAX_SAME_HASH:
            raise MalformedCheckpoint(f"{where}: more than {MAX_SAME_HASH} dict or set keys share one hash "
                                      f"(a hash-collision attack: building it would take quadratic time); refusing")


def grown(container: Any, where: str) -> None:
    """Call after each key inserted into `container` one at a time: recounts its keys at power-of-two sizes."""
    n = len(container)
    if n >= CHECK_FROM and not n & (n - 1):
        check_keys(container, where)
