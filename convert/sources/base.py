"""One interface for every input kind: a Source, opened safely, gives what the writer needs.

    with open_source(path) as source:      # FileSource, DcpSource, HfSource (ops.convert.open_source) or LiveSource
        source.root                        # the record tree (TensorRef, ObjectRecord, ... and plain values)
        source.kernel_copy_sources         # the open files that stored tensor bytes are copied from, file-to-file
        source.provenance()                # the sidecar's `source` (sha256 PENDING until `seal`)
        source.copy_files                  # files copied verbatim into the output (sealed by checkpoint.json)
        source.sources                     # paths an overwrite must never replace (the ownership rule)
        source.seal()                      # after every byte is read: "unchanged since opened" + final sha256 fields

Opening is the safety boundary: regular files only (a FIFO cannot block), read with pread (a
truncation is an error, never SIGBUS), each file's identity taken so `seal` can prove it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..primitives.hashing import PENDING_SHA256
from ..write.safetensors_io import KernelCopySources


def file_source(name: str, size: int, fmt: str, protocol: int, sha256: str | None = None) -> dict[str, Any]:
    """`source` for a converted file: base name, size, sha256 (PENDING until hashed), container format."""
    return {"name": name, "size": size, "sha256": sha256 or PENDING_SHA256, "format": fmt, "pickle_protocol": protocol}


class Source:
    """Base of every input kind. Subclasses open in `__init__` and set `root`; use as a context manager."""

    kind: str = "?"
    path: Path
    root: Any = None
    kernel_copy_sources: KernelCopySources = None
    copy_files: list[Path]
    root_shards: dict[str, str] | None = None  # the shard of each root key, fixed by the input (HF shards)

    @property
    def sources(self) -> list[Path]:
        """What an overwrite must never replace (nor a folder holding it)."""
        return [self.path]

    def provenance(self) -> dict[str, Any]:
        """The sidecar's `source` object; fields known only after reading everything are PENDING."""
        raise NotImplementedError

    def seal(self) -> dict[str, Any]:
        """Called after every byte is read: raise SourceChanged if anything differs from when opened;
        return the final `source` fields (sha256 of what was converted)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the open files (stop any hashing still running)."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
