"""Strict JSON for untrusted input (sidecars, safetensors headers, HF index files). No torch here."""

from __future__ import annotations

import json
from typing import Any

from ..errors import MalformedCheckpoint


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C: this hook runs once per JSON object of a sidecar that may hold millions
    if len(out) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise MalformedCheckpoint(f"duplicate key {key!r:.80} in JSON")
    return out


def strict_json(raw: bytes, where: str) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, NaN/Infinity literals and invalid UTF-8."""
    def no_constants(name: str) -> Any:
        raise MalformedCheckpoint(f"{where}: JSON literal {name} is not allowed")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=no_constants)
    except UnicodeDecodeError as exc:
        raise MalformedCheckpoint(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MalformedCheckpoint(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise MalformedCheckpoint(f"{where}: JSON nested too deeply") from None
    except MalformedCheckpoint as exc:
        raise MalformedCheckpoint(f"{where}: {exc}") from None
