"""A checkpoint file (zip, legacy tar-less or plain pickle) as a Source."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..primitives.hashing import BackgroundSha256
from ..read import Input, read_tree
from ..read.vm import reading
from ..write.safetensors_io import KernelCopySource
from .base import Source, file_source


class FileSource(Source):
    """One checkpoint file, read safely; its sha256 is computed on a thread while it is converted.

    Args:
        path: the file. converting: word a SourceChanged as "...; nothing was written".
        hash: start the background sha256 (False for `read`, which needs no provenance).
        salvage: read a file that names code: each call to a gadget becomes an inert record (listed in
            the sidecar's `source`), instead of refusing the file.
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike, *, converting: bool = False, hash: bool = True,
                 salvage: bool = False) -> None:
        self.path = Path(path)
        self.copy_files = []
        self._stack = contextlib.ExitStack()
        try:
            self.input = self._stack.enter_context(Input(self.path, converting=converting))
            self._hasher = (self._stack.enter_context(BackgroundSha256(self.input.fileno(), self.input.size,
                                                                       self.input.path)) if hash else None)
            with reading(salvage=salvage) as session:  # salvage: calls to gadgets kept as inert records
                result = read_tree(self.input)
        except BaseException as exc:  # Input words a failure caused by a rewrite as SourceChanged
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.root, self.format, self.protocol = result.root, result.format, result.protocol
        self.neutralised = list(session.neutralised)
        self.kernel_copy_sources = KernelCopySource(self.input.buf, self.input.fileno())

    def provenance(self) -> dict[str, Any]:
        source = file_source(self.path.name, self.input.size, self.format, self.protocol)
        if self.neutralised:
            source.update(salvaged_source(self.neutralised))
        return source

    def seal(self) -> dict[str, Any]:
        digest = self._hasher.hexdigest() if self._hasher is not None else None
        self.input.check_unchanged()  # the hash is of what was converted iff the file did not change
        return {"sha256": digest} if digest is not None else {}

    def close(self) -> None:
        self.root = None
        self._stack.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.root = None
        self._stack.__exit__(exc_type, exc, tb)  # Input reports a failure caused by a rewrite as SourceChanged


MAX_LISTED_CALLS = 1000  # neutralised calls listed in the sidecar (the count is always exact)


def salvaged_source(neutralised: list) -> dict[str, Any]:
    """The sidecar `source` fields of a salvaged file: the flag, how many calls were neutralised, which."""
    return {"salvaged": True, "neutralised_count": len(neutralised),
            "neutralised_calls": [str(f) for f in neutralised[:MAX_LISTED_CALLS]]}
