"""Strict JSON for untrusted input (sidecars, safetensors headers, HF index files). No torch here.

Depth without recursion limits: the stdlib's C parser recurses once per nesting level, against the
interpreter's recursion limit (Python 3.11: the same counter as Python frames, about 1000), and
raises RecursionError on deeper input. That input is then parsed again by `_parse_deep`, an explicit
stack of the open containers that hands each element to the same C scanner (a shallow subtree is
parsed whole in C) and opens an element itself only when the scanner cannot; it refuses input nested
deeper than `max_depth` as soon as it opens that many. No interpreter setting is changed.

The depth of what either parser returns is then measured (deep.json_depth), except where the C parser's
success already bounds it: before Python 3.12 its recursion counts against the interpreter's recursion
limit, so with a limit no higher than `max_depth` it cannot return anything deeper.
"""

from __future__ import annotations

import json
import re
import sys
from json.decoder import scanstring
from typing import Any

from ..errors import MalformedCheckpoint
from ..model.limits import LIMITS
from .deep import json_depth

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C: this hook runs once per JSON object of a sidecar that may hold millions
    if len(out) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise MalformedCheckpoint(f"duplicate key {key!r:.80} in JSON")
    return out


class _TooDeep(Exception):
    pass


def strict_json(raw: bytes, where: str, max_depth: int = LIMITS.sidecar_json_depth) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, NaN/Infinity literals and invalid UTF-8.

    Args:
        raw: the bytes.
        where: names the input in error messages.
        max_depth: JSON nested deeper than this is refused (a depth bomb within a few times this many levels).
    Raises:
        MalformedCheckpoint: in one line, never RecursionError.
    """
    def no_constants(name: str) -> Any:
        raise MalformedCheckpoint(f"JSON literal {name} is not allowed")
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=no_constants)
    try:
        text = raw.decode("utf-8")
        try:
            value = decoder.decode(text)
            if sys.version_info < (3, 12) and sys.getrecursionlimit() <= max_depth:
                return value  # the C parser could not have returned anything deeper (see the module docstring)
        except RecursionError:
            value = _parse_deep(text, decoder, max_depth)
        if json_depth(value, max_depth) > max_depth:
            raise _TooDeep
        return value
    except UnicodeDecodeError as exc:
        raise MalformedCheckpoint(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MalformedCheckpoint(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except (_TooDeep, RecursionError):
        raise MalformedCheckpoint(f"{where}: JSON nests deeper than {max_depth} levels; refusing") from None
    except MalformedCheckpoint as exc:
        raise MalformedCheckpoint(f"{where}: {exc}") from None


def _parse_deep(text: str, decoder: json.JSONDecoder, max_depth: int) -> Any:
    """`decoder.decode(text)` for input too deep for the C parser: see the module docstring."""
    scan, skip, hook = decoder.scan_once, _WHITESPACE.match, decoder.object_pairs_hook
    # One frame per container opened here: [items, is_object, key of the value being parsed].
    stack: list[list[Any]] = []
    idx = skip(text, 0).end()
    while True:
        # A value starts at idx.
        opener = text[idx:idx + 1]
        if opener == "[" or opener == "{":
            try:
                value, idx = scan(text, idx)  # the whole subtree, in C, unless it is too deep for that
            except StopIteration as stop:  # the scanner's "no value at this index", also from inside
                raise json.JSONDecodeError("Expecting value", text, stop.value) from None
            except RecursionError:
                if len(stack) >= max_depth:
                    raise _TooDeep from None
                idx = skip(text, idx + 1).end()
                frame = [[], opener == "{", None]
                stack.append(frame)
                closer = "}" if frame[1] else "]"
                if text[idx:idx + 1] == closer:  # empty (the C scanner takes these: kept for completeness)
                    idx += 1
                    stack.pop()
                    value = hook([]) if frame[1] else []
                elif frame[1]:
                    idx = _key(text, idx, frame, skip)
                    continue
                else:
                    continue
        else:
            try:
                value, idx = scan(text, idx)
            except StopIteration as stop:
                raise json.JSONDecodeError("Expecting value", text, stop.value) from None
        # A value ends at idx: hand it to its container; close containers that end here.
        while True:
            if not stack:
                end = skip(text, idx).end()
                if end != len(text):
                    raise json.JSONDecodeError("Extra data", text, end)
                return value
            frame = stack[-1]
            frame[0].append((frame[2], value) if frame[1] else value)
            idx = skip(text, idx).end()
            char = text[idx:idx + 1]
            if char == ",":
                idx = skip(text, idx + 1).end()
                if frame[1]:
                    idx = _key(text, idx, frame, skip)
                break
            if char != ("}" if frame[1] else "]"):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)
            idx += 1
            stack.pop()
            value = hook(frame[0]) if frame[1] else frame[0]


def _key(text: str, idx: int, frame: list[Any], skip: Any) -> int:
    """Parse `"key" :` at idx into frame[2]; the index of the value after it."""
    if text[idx:idx + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, idx)
    frame[2], idx = scanstring(text, idx + 1, True)
    idx = skip(text, idx).end()
    if text[idx:idx + 1] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
    return skip(text, idx + 1).end()
