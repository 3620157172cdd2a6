"""Pick the model state dict out of a checkpoint tree: by `--key PATH`, or the one a user means.

Default order: the root itself if it is a bare state dict (every value a tensor) or a whole-model
pickle (its state_dict); else the first of DEFAULT_KEYS present at the root that holds tensors (or,
holding none itself, has one of DEFAULT_KEYS that does: `{"model": {"module": sd}}`); else an error
listing every candidate with its size.
"""

from __future__ import annotations

import collections
from typing import Any

from ..errors import ConvertError
from ..model.records import ModuleRecord, NdArrayRef, TensorRef, Unsupported

DEFAULT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
                "params", "weights")
TENSORS = (TensorRef, NdArrayRef, Unsupported)
_DICTS = (dict, collections.OrderedDict)
_MAX_DEPTH = 4  # how deep candidates are looked for (for the error message only)


def _unwrap(value: Any) -> Any:
    return value.state_dict if isinstance(value, ModuleRecord) else value


def is_bare(value: Any) -> bool:
    """A non-empty dict of name → tensor."""
    return (type(value) in _DICTS and len(value) > 0 and all(type(k) is str for k in value)
            and all(isinstance(v, TENSORS) for v in value.values()))


def select_state_dict(root: Any, key: str | None = None) -> tuple[dict, str]:
    """(the state dict, the path it was found at: "" for the root)."""
    root = _unwrap(root)
    if key is not None:
        found = _resolve(root, [p for part in key.split("/") for p in [part] if p != ""], [])
        if found is None:
            raise ConvertError(f"--key {key!r}: no such entry; candidates: {_candidates(root)}")
        value, path = found
        value = _unwrap(value)
        if not _holds_tensors(value, 0):
            what = "a tensor" if isinstance(value, TENSORS) else f"a value of type {type(value).__name__}"
            raise ConvertError(f"--key {key!r} is {what}, not a dict of tensors; "
                               f"candidates: {_candidates(root)}")
        return value, path
    found = _default(root, "", 0)
    if found is None:
        raise ConvertError(f"no model state dict found at the root or under {', '.join(DEFAULT_KEYS)}; "
                           f"pass --key PATH, one of: {_candidates(root)}")
    return found


def _default(node: Any, path: str, depth: int) -> tuple[dict, str] | None:
    node = _unwrap(node)
    if is_bare(node) or (depth > 0 and type(node) in _DICTS and any(isinstance(v, TENSORS) for v in node.values())):
        return node, path  # under a known key, non-tensor entries are left out (and listed)
    if type(node) not in _DICTS or depth >= 3:
        return None
    for key in DEFAULT_KEYS:
        if key in node:
            found = _default(node[key], f"{path}/{key}" if path else key, depth + 1)
            if found is not None:
                return found
    return None


def _resolve(node: Any, parts: list[str], done: list[str]) -> tuple[Any, str] | None:
    """Follow `parts` (each a key, or dotted keys: "model.ema" is the key "model.ema" or "model" then "ema")."""
    if not parts:
        return node, "/".join(done)
    node = _unwrap(node)
    head = parts[0].split(".")
    for n in range(len(head), 0, -1):  # the longest key first: state-dict keys may contain dots
        name, rest = ".".join(head[:n]), ".".join(head[n:])
        child = _child(node, name)
        if child is _MISSING:
            continue
        found = _resolve(child, ([rest] if rest else []) + parts[1:], [*done, name])
        if found is not None:
            return found
    return None


_MISSING = object()


def _child(node: Any, name: str) -> Any:
    if type(node) in _DICTS:
        return node.get(name, _MISSING)
    if type(node) in (list, tuple) and name.isdigit() and int(name) < len(node):
        return node[int(name)]
    return _MISSING


def _holds_tensors(node: Any, depth: int) -> bool:
    """A dict with a tensor in it, directly or in nested dicts (which export joins with ".")."""
    node = _unwrap(node)
    return type(node) in _DICTS and depth < 16 and any(
        isinstance(v, TENSORS) or _holds_tensors(v, depth + 1) for v in node.values())


def tensor_bytes(value: Any) -> int:
    if isinstance(value, TensorRef):
        return value.numel * value.dtype.itemsize
    if isinstance(value, NdArrayRef):
        return len(value.data)
    return 0


def _candidates(root: Any) -> str:
    """Every dict holding tensors, with its path, tensor count and size (for the error message)."""
    from ..model.sizes import human_bytes

    found: list[str] = []

    def walk(node: Any, path: str, depth: int) -> None:
        node = _unwrap(node)
        if type(node) in _DICTS:
            tensors = [v for v in node.values() if isinstance(v, TENSORS)]
            if tensors:
                found.append(f"{path or '<root>'} ({len(tensors)} tensors, {human_bytes(sum(map(tensor_bytes, tensors)))})")
            items = [(str(k), v) for k, v in node.items()]
        elif type(node) in (list, tuple):
            items = [(str(i), v) for i, v in enumerate(node)]
        else:
            return
        if depth < _MAX_DEPTH:
            for name, child in items[:1000]:
                if type(_unwrap(child)) in (*_DICTS, list, tuple):
                    walk(child, f"{path}/{name}" if path else name, depth + 1)

    walk(root, "", 0)
    return "; ".join(found[:20]) + (f"; and {len(found) - 20} more" if len(found) > 20 else "") if found else "none"
