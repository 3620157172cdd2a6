"""A `torch.save` file held in memory: the blob of `torch.storage._load_from_bytes(b"...")`.

Plain `pickle.dump` of a tensor (skorch's saved nets, research repos) pickles its storage as a call of
`_load_from_bytes` on a whole torch.save file (legacy format; torch.load also takes a zip one). The blob
is read by the reader's own container entry point, as a file on disk would be (same VM, limits and gadget
checks, in the same read session, whose nesting depth the VM bounds); the storage it describes is what
the call gives back.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..errors import MalformedCheckpoint
from . import vm
from .containers import read_container


class _BlobBytes(bytes):
    """The blob: bytes (the VM reads it in memory) that also answer `read(offset, n)` like SourceBytes."""

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > len(self):
            raise MalformedCheckpoint(f"truncated: needs {n} bytes at byte {offset}, the blob holds {len(self)}")
        return bytes(self[offset:offset + n])


class _BlobInput:
    """The part of `containers.Input` the container readers use, over bytes in memory."""

    def __init__(self, data: bytes, name: str) -> None:
        self.buf = _BlobBytes(data)
        self.size, self.name, self.path = len(data), name, Path(name)
        self._file = io.BytesIO(self.buf)
        self.converting = False

    def read(self, offset: int, n: int) -> bytes:
        return self.buf.read(offset, n)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a blob in memory has no file descriptor")


def read_blob(data: bytes, name: str) -> Any:
    """What a `_load_from_bytes` blob holds: a storage (the VM refuses anything else outside salvage)."""
    return read_container(_BlobInput(data, name)).root  # type: ignore[arg-type]  # duck-typed Input


vm.register_blob_reader(read_blob)
