"""Locations inside a checkpoint tree, for messages: `$['optimizer']['state'][0].weight`."""

from __future__ import annotations


class Field(str):
    """A path step that is an attribute of a record (`.state`), not a key (`['state']`)."""


KEY = Field("<key>")


def format_path(path: list) -> str:
    """A JSONPath-like location for messages: `$['hyper_parameters']['encoder'][0].state`."""
    out = "$"
    for step in path:
        out += f".{step}" if isinstance(step, Field) else f"[{step!r:.60}]"
    return out
