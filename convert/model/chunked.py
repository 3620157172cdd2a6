"""Bytes the writer cannot map: a live device storage, read in bounded chunks when the file is written.

`save_checkpoint` gives a CUDA tensor's storage as an `Entry.source` of this kind, so that its bytes
go to the file through one small pinned host buffer instead of a host copy of the whole storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class ChunkedSource:
    """Base class of entry sources that hand out their bytes chunk by chunk (see `chunks`)."""

    nbytes: int

    def chunks(self, offset: int, nbytes: int) -> Iterator[Any]:
        """Bytes [offset, offset + nbytes) as consecutive bytes-like chunks; each is valid until the next."""
        raise NotImplementedError

    def to_host(self, offset: int, nbytes: int) -> memoryview:
        """Bytes [offset, offset + nbytes) copied to host memory at once (for strided gathers only)."""
        raise NotImplementedError
