"""Streaming safetensors writer: header first, then each entry's bytes straight from the source.

Entries are laid out widest dtype first (as safetensors itself does) so every tensor starts on
a multiple of its element size; the header is padded with spaces to 8 bytes.
"""

from __future__ import annotations

import json
from typing import BinaryIO

from ..dtypes import ITEMSIZE_BY_CODE
from .plan import Entry


def layout(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: -ITEMSIZE_BY_CODE[e.code])  # stable: plan order within a width


def header_bytes(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for entry in entries:
        header[entry.key] = {"dtype": entry.code, "shape": entry.shape, "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(out: BinaryIO, entries: list[Entry], metadata: dict[str, str]) -> None:
    """Write `entries` as one safetensors file to the open binary file `out`."""
    ordered = layout(entries)
    out.write(header_bytes(ordered, metadata))
    for entry in ordered:
        data = entry.data()
        if len(data) != entry.nbytes:  # a planning bug, never input-dependent: fail loudly
            raise AssertionError(f"entry {entry.key!r}: produced {len(data)} bytes, planned {entry.nbytes}")
        out.write(data)
        if isinstance(data, memoryview):
            data.release()
