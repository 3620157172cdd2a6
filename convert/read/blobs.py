"""A legacy `torch.save` file held in memory: the blob of `torch.storage._load_from_bytes(b"...")`.

Plain `pickle.dump` of a tensor (skorch's saved nets, research repos) pickles its storage as a call of
`_load_from_bytes` on a whole legacy torch.save file. The blob is read by the same legacy reader as a file
on disk (same VM, limits and gadget checks); the storage it describes is what the call gives back.
"""

from __future__ import annotations

from typing import Any

from ..errors import MalformedCheckpoint
from .containers import LEGACY_MAGIC, _read_legacy
from .records import StorageRef
from .vm import PickleVM


class _BlobInput:
    """The part of `containers.Input` the legacy reader uses, over bytes in memory."""

    def __init__(self, data: bytes, name: str) -> None:
        self.buf, self.size, self.name = data, len(data), name

    def read(self, offset: int, n: int) -> bytes:
        return self.buf[offset:offset + n]


def read_blob(data: bytes, name: str) -> StorageRef:
    """The storage a `_load_from_bytes` blob holds. Raises MalformedCheckpoint for anything else."""
    inp = _BlobInput(data, name)
    first = PickleVM(data, source=f"{name} (magic number)")
    magic = first.run()
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise MalformedCheckpoint(f"{name}: _load_from_bytes of bytes that are not a legacy torch.save file")
    result = _read_legacy(inp, first.pos)  # type: ignore[arg-type]  # duck-typed Input
    root: Any = result.root
    if not isinstance(root, StorageRef):
        raise MalformedCheckpoint(f"{name}: _load_from_bytes blob holds a {type(root).__name__}, not a storage")
    return root
