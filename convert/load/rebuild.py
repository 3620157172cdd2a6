"""Tensors and storages that the sidecar does not spell out: plain entries and storages in pieces.

A plain tensor (or array) has no sidecar row: it is exactly its safetensors entry, whose checked
header gives dtype and shape. A storage written in pieces is rebuilt from the contiguous copies
of its tensors, scattered back through their views, plus one raw entry (the rest) for the bytes no
tensor covers; when the pieces lie back to back in one file, in storage order, the lazy loader maps
that span as the storage itself (no copy).

Every row, offset and size comes from the folder and is checked here before it is used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MalformedCheckpoint
from ..model.strides import contiguous_strides
from ..model.torch_values import tensor_dtype, torch_dtype_for_code
from ..model.views import mark_view, view_end
from .safetensors_reader import EntryInfo, SafetensorsFile

# safetensors code → numpy dtype of a plain (C-order, little-endian) array
NUMPY_BY_CODE = {"BOOL": "|b1", "I8": "|i1", "U8": "|u1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "U16": "<u2",
                 "U32": "<u4", "U64": "<u8", "F16": "<f2", "F32": "<f4", "F64": "<f8", "C64": "<c8"}
_WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Piece:
    """One part of a storage: a tensor row (dtype, shape, stride, offset) or a gap ({"offset": byte})."""

    name: str  # tensor id, or "gap@OFFSET"
    row: dict
    file_name: str
    key: str
    file: SafetensorsFile


def entry_index(entries: dict[str, dict[str, str]]) -> dict[str, tuple[str, str]]:
    """The sidecar's `entries` (file → {id: key}) as id → (file, key); an id listed twice is refused."""
    index: dict[str, tuple[str, str]] = {}
    for name, ids in entries.items():
        for id_, key in ids.items():
            if id_ in index:
                raise MalformedCheckpoint(f"entries list {id_} twice ({index[id_][0]} and {name})")
            index[id_] = (name, key)
    return index


def _aligned(raw: torch.Tensor, itemsize: int) -> torch.Tensor:
    return raw.clone() if raw.numel() and raw.data_ptr() % itemsize else raw


def plain_tensor(raw: torch.Tensor, entry: EntryInfo) -> torch.Tensor:
    """The entry's bytes as the tensor safetensors describes (its own storage, contiguous)."""
    dtype = torch_dtype_for_code(entry.code)
    if raw.numel() == 0:
        return torch.empty(entry.shape, dtype=dtype)
    return _aligned(raw, dtype.itemsize).view(dtype).reshape(entry.shape)


def plain_array(raw: torch.Tensor, entry: EntryInfo, where: str) -> np.ndarray:
    """The entry's bytes as a C-order little-endian numpy array of its dtype and shape."""
    dtype = NUMPY_BY_CODE.get(entry.code)
    if dtype is None:
        raise MalformedCheckpoint(f"{where}: safetensors dtype {entry.code} is not a numpy dtype")
    if raw.numel() == 0:
        return np.empty(entry.shape, dtype=dtype)
    return raw.numpy().view(np.dtype(dtype)).reshape(entry.shape)


def rebuild_storage(sid: str, nbytes: int, pieces: list[Piece], rest: Piece | None,
                    raw: Callable[[str, str], torch.Tensor], *, mapped: bool) -> torch.Tensor:
    """The storage's bytes as a flat uint8 tensor: mapped from the file when `mapped` and the pieces
    lie back to back there, else fresh memory with every piece copied in through its view and the
    rest filling the bytes no piece covers."""
    held = 0
    for part in [*pieces, *([rest] if rest else [])]:
        entry = part.file.entries.get(part.key)
        if entry is None:
            raise MalformedCheckpoint(f"storage {sid}: {part.file_name} has no entry {part.key!r:.80}")
        held += entry.nbytes
    if held < nbytes:  # the writer stores every byte at least once: this also bounds what is allocated
        raise MalformedCheckpoint(f"storage {sid} should be {nbytes} bytes; its pieces hold only {held}")
    if mapped and rest is None:
        span = _adjacent_span(nbytes, pieces)
        if span is not None:
            return span
    out = torch.zeros(nbytes, dtype=torch.uint8)
    for piece in pieces:
        _scatter(sid, out, piece, raw(piece.file_name, piece.key))
    if rest is not None:
        mask = torch.zeros(nbytes, dtype=torch.uint8)
        for piece in pieces:
            dtype, shape, stride, offset, _ = _view(sid, piece)
            mark_view(mask, offset, shape, stride, dtype.itemsize)
        src, free = raw(rest.file_name, rest.key), mask == 0
        if src.numel() != int(free.sum()):
            raise MalformedCheckpoint(f"storage {sid}: its pieces leave {int(free.sum())} bytes, "
                                      f"{rest.file_name}:{rest.key} holds {src.numel()}")
        out[free] = src
    return out


def _view(sid: str, piece: Piece) -> tuple[torch.dtype, list[int], list[int], int, int]:
    """(dtype, shape, stride, offset, numel) of a piece's row, its view checked against nothing yet."""
    row = piece.row
    dtype = tensor_dtype(row["dtype"], f"storage {sid}: piece {piece.name}")
    shape, stride, offset = row["shape"], row["stride"], row["offset"]
    if len(shape) != len(stride):
        raise MalformedCheckpoint(f"storage {sid}: piece {piece.name} has shape and stride of different rank")
    return dtype, shape, stride, offset, math.prod(shape)


def _scatter(sid: str, out: torch.Tensor, piece: Piece, src: torch.Tensor) -> None:
    """Copy a piece's contiguous bytes into `out` through its view (bit for bit, as integers)."""
    dtype, shape, stride, offset, numel = _view(sid, piece)
    size = dtype.itemsize
    if view_end(offset, shape, stride, size) > out.numel():
        raise MalformedCheckpoint(f"storage {sid}: piece {piece.name} reaches past its {out.numel()} bytes")
    if src.numel() != numel * size:
        raise MalformedCheckpoint(f"storage {sid}: piece {piece.name} needs {numel * size} bytes, "
                                  f"{piece.file_name}:{piece.key} holds {src.numel()}")
    if numel == 0:
        return
    if size == 16:  # complex128: two int64 words per element
        word, shape, stride, offset = torch.int64, [*shape, 2], [s * 2 for s in stride] + [1], offset * 2
    elif size in _WORD:
        word = _WORD[size]
    else:
        raise MalformedCheckpoint(f"storage {sid}: piece {piece.name} has an element size of {size} bytes")
    dst = torch.empty(0, dtype=word).set_(out.untyped_storage(), offset, shape, stride)
    dst.copy_(_aligned(src, word.itemsize).view(word).view(shape))


def _adjacent_span(nbytes: int, pieces: list[Piece]) -> torch.Tensor | None:
    """The file span holding the whole storage if its contiguous pieces lie back to back in one file."""
    file = pieces[0].file
    ordered = []
    for piece in pieces:
        row = piece.row
        dtype = tensor_dtype(row["dtype"], f"piece {piece.name}")
        entry = file.entries.get(piece.key)
        numel = math.prod(row["shape"])
        if (piece.file is not file or entry is None or numel == 0 or entry.nbytes != numel * dtype.itemsize
                or tuple(row["stride"]) != contiguous_strides(row["shape"])):
            return None
        ordered.append((row["offset"] * dtype.itemsize, entry))
    ordered.sort(key=lambda p: p[0])
    first = ordered[0][1].start
    covered = 0
    for start, entry in ordered:
        if start != covered or entry.start != first + covered:
            return None
        covered += entry.nbytes
    if covered != nbytes or file.map is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(file.map, dtype=torch.uint8, offset=first, count=nbytes)
