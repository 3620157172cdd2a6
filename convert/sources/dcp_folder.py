"""A torch.distributed.checkpoint (DCP) folder, read into the tree `dcp_to_torch_save` + `torch.load` gives.

The folder holds `.metadata` (see `dcp_metadata.py`) and `__<rank>_<n>.distcp` files. Each saved
item sits at (offset, length) of one `.distcp` file as its own small `torch.save` archive: a tensor
chunk (a box of the whole tensor) or a non-tensor value. Every archive goes through the same safe
container reader as any checkpoint (nothing is unpickled); chunk boxes are checked to tile their
tensor exactly, and each chunk's archive to hold a tensor of the box's shape and the tensor's dtype.

Every `.distcp` part is opened like any source (`containers.Input`: regular files only, no blocking
open, pread and never a mapping, its identity checked again once read). A tensor saved in one chunk
that is exactly its storage is copied file-to-file by the writer; a tensor split over chunks gets a
storage made of `pieces` that reassemble it in row-major order with bounded memory
(`write/chunked_source.py`), reading each slab's bytes from the parts with pread.
Values are placed into nested dicts/lists by the planner paths, as DCP's `set_element` does.
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import MalformedCheckpoint, UnsupportedValue
from ..model.chunked_source import Box, tensor_pieces
from ..model.records import StorageRef, TensorRef
from ..model.strides import contiguous_strides
from ..model.tensor_bytes import covers_storage
from ..model.tiling import tiling_problem
from ..primitives.hashing import PENDING_SHA256, BackgroundSha256
from ..primitives.source import SourceBytes, SourceChanged
from ..read import read_tree
from ..read.containers import Input, ReadResult, read_container
from ..write.safetensors_io import KernelCopySource
from .base import Source
from .dcp_metadata import METADATA_NAME, DcpMetadata, TensorMeta, dcp_files, is_dcp_folder, read_metadata

SOURCE_FORMAT = "torch-dcp"  # the sidecar's source.format for a DCP folder

__all__ = ["DcpFolder", "DcpSource", "dcp_files", "is_dcp_folder"]


class _Window(io.RawIOBase):
    """A read-only file object over bytes [start, start + length) of an open file (for zipfile)."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the archive")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        if n == 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:n]], self._start + self._pos)
        self._pos += got
        return got


class _Slice(SourceBytes):
    """Bytes [start, start + length) of a part's `SourceBytes`: what a saved item's archive reader sees."""

    def __init__(self, whole: SourceBytes, start: int, length: int) -> None:
        super().__init__(whole.fileno(), length, whole.path)
        self.whole, self.start = whole, start

    def read(self, offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        if offset < 0 or offset + n > len(self):
            raise ValueError(f"read of {n} bytes at {offset} outside a {len(self)}-byte archive")
        return self.whole.read(self.start + offset, n)


class _ArchiveInput:
    """One saved item (a `torch.save` archive inside a `.distcp` file), shaped like `containers.Input`."""

    def __init__(self, part: Input, start: int, length: int, what: str) -> None:
        self.path = part.path
        self.name = f"{part.path.name} [{what}, bytes {start}..{start + length}]"
        self.size = length
        self.buf = _Slice(part.buf, start, length)
        self._file = _Window(part.fileno(), start, length)
        self._part, self._start = part, start

    def read(self, offset: int, n: int) -> bytes:
        """Exactly `n` bytes of the archive at `offset` (what `containers.Input.read` gives)."""
        return self.buf.read(offset, n)

    def fileno(self) -> int:
        return self._part.fileno()

    def changed(self) -> bool:
        return self._part.changed()  # the part file's identity, as when it was opened

    def changed_error(self) -> SourceChanged:
        return self._part.changed_error()

    def check_unchanged(self) -> None:
        self._part.check_unchanged()

    def rebase(self, result: ReadResult) -> None:
        """Point storages at the whole part (file offsets): nothing refers to the slice once it is read."""
        for storage in result.storages:
            if storage.buffer is self.buf:
                storage.buffer, storage.offset = self._part.buf, storage.offset + self._start

    def close(self) -> None:
        pass


class DcpFolder:
    """A DCP folder, opened: `root` is the nested state dict (TensorRefs and plain values).

    Use as a context manager: the `.distcp` mappings stay open until `close`, since tensors point into them.
    """

    def __init__(self, folder: str | os.PathLike, *, converting: bool = False) -> None:
        self.folder = Path(folder)
        self.converting = converting  # word a change as "...; nothing was written", as a converted file does
        self.metadata: DcpMetadata = read_metadata(self.folder)
        self.parts: dict[str, Input] = {}
        self.globals_used: dict[str, int] = dict(self.metadata.globals_used)
        try:
            self.root = self._read()
            self.check_unchanged()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ files
    def part(self, name: str) -> Input:
        """The `.distcp` file `name`, opened like any source: regular file only (a FIFO cannot block),
        read with pread (a truncation is a clean error, never SIGBUS), its identity kept for `check_unchanged`."""
        if name not in self.parts:
            path = self.folder / name
            if not os.path.lexists(path):
                raise MalformedCheckpoint(f"{path}: named by .metadata but missing")
            part = self.parts[name] = Input(path, converting=self.converting)
            st = os.lstat(path)  # the file opened must be the folder's own entry, not reached through a link
            if stat.S_ISLNK(st.st_mode) or (st.st_dev, st.st_ino) != (part.identity.dev, part.identity.ino):
                raise MalformedCheckpoint(f"{path}: not a regular file of the folder (a symbolic link?)")
        return self.parts[name]

    def check_unchanged(self) -> None:
        """Raise SourceChanged if `.metadata` (and its rank-local copies) or any part read differs from when opened."""
        self.metadata.check_unchanged()
        for part in self.parts.values():
            part.check_unchanged()

    def part_names(self) -> list[str]:
        """The `.distcp` files the metadata refers to, sorted."""
        return sorted({info.relative_path for info in self.metadata.storage.values()})

    def close(self) -> None:
        for part in self.parts.values():
            part.close()
        self.parts.clear()

    def __enter__(self) -> DcpFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ items
    def _archive(self, fqn: str, offsets: tuple[int, ...] | None, reader: Any) -> ReadResult:
        info = self.metadata.storage.get((fqn, offsets))
        what = repr(fqn) if offsets is None else f"{fqn!r} chunk at {list(offsets)}"
        if info is None:
            raise MalformedCheckpoint(f"{self.folder}: {what} has no storage record in .metadata")
        part = self.part(info.relative_path)
        if info.offset + info.length > part.size or info.length < 4:
            raise MalformedCheckpoint(f"{part.path}: {what} is recorded at bytes {info.offset}..{info.offset + info.length} "
                                      f"but the file holds {part.size} bytes")
        if part.read(info.offset, 4) != b"PK\x03\x04":
            raise MalformedCheckpoint(f"{part.path}: {what} at byte {info.offset} is not a torch.save archive")
        inp = _ArchiveInput(part, info.offset, info.length, what)
        try:
            result = reader(inp)
            inp.rebase(result)
        finally:
            inp.close()
        for name, pos in result.globals_used.items():
            self.globals_used.setdefault(name, pos)
        return result

    def _tensor(self, fqn: str, meta: TensorMeta) -> TensorRef:
        problem = tiling_problem(meta.shape, [(c.offsets, c.sizes) for c in meta.chunks])
        if problem:
            raise MalformedCheckpoint(f"{self.folder}/.metadata: tensor {fqn!r} of shape {list(meta.shape)}: {problem}")
        refs: list[tuple[tuple[int, ...], TensorRef]] = []
        for chunk in meta.chunks:
            if meta.shape and math.prod(chunk.sizes) == 0:
                continue  # an empty shard (more ranks than rows): nothing to read
            ref = self._archive(fqn, chunk.offsets, read_container).root
            where = f"{self.folder}: tensor {fqn!r} chunk at {list(chunk.offsets)}"
            if not isinstance(ref, TensorRef):
                raise MalformedCheckpoint(f"{where} holds a {type(ref).__name__}, not a tensor")
            if ref.dtype != meta.dtype or tuple(ref.shape) != chunk.sizes:
                raise MalformedCheckpoint(f"{where}: holds {str(ref.dtype).removeprefix('torch.')}{list(ref.shape)}, "
                                          f".metadata says {str(meta.dtype).removeprefix('torch.')}{list(chunk.sizes)}")
            if ref.conj or ref.neg:
                raise UnsupportedValue(f"{where}: a chunk saved with a lazy conj/neg bit is not supported")
            if ref.storage.base is not None:
                raise MalformedCheckpoint(f"{where}: not a torch.save archive of the current format")
            refs.append((chunk.offsets, ref))
        nbytes = math.prod(meta.shape) * meta.dtype.itemsize
        contiguous = contiguous_strides(meta.shape)
        if len(refs) == 1 and covers_storage(refs[0][1]) and tuple(refs[0][1].shape) == meta.shape:
            storage = refs[0][1].storage  # one chunk, exactly its storage: copied file-to-file as it is
        else:
            shape, itemsize = meta.shape, meta.dtype.itemsize
            storage = StorageRef(fqn, meta.dtype, nbytes, "cpu", pieces=lambda: tensor_pieces(shape, itemsize, _boxes(refs)))
        return TensorRef(storage, meta.dtype, 0, meta.shape, contiguous)

    def _read(self) -> dict:
        md = self.metadata
        known: set[tuple[str, tuple[int, ...] | None]] = set()
        for fqn, item in md.items.items():
            known |= {(fqn, c.offsets) for c in item.chunks} if isinstance(item, TensorMeta) else {(fqn, None)}
        stray = [k for k in md.storage if k not in known]
        if stray:
            raise MalformedCheckpoint(f"{self.folder}/.metadata: storage record for {stray[0][0]!r} at "
                                      f"{list(stray[0][1] or [])} belongs to no saved item")
        root: dict = {}
        limit = len(md.items)
        for fqn, item in md.items.items():
            value = self._tensor(fqn, item) if isinstance(item, TensorMeta) else self._archive(fqn, None, read_tree).root
            _set_element(root, md.paths.get(fqn, (fqn,)), value, limit, f"{self.folder}/.metadata: {fqn!r}")
        return root


def _boxes(refs: list[tuple[tuple[int, ...], TensorRef]]) -> list[Box]:
    """The chunks of one tensor as boxes over their part files (read slab by slab with pread, never mapped)."""
    return [Box(offsets, tuple(ref.shape), ref.storage.buffer, ref.storage.offset + ref.offset * ref.dtype.itemsize,
                tuple(ref.stride)) for offsets, ref in refs]


def _set_element(root: dict, path: tuple, value: Any, max_index: int, where: str) -> None:
    """Put `value` at `path`, creating dicts (str keys) and lists (int keys) on the way, as DCP's
    `set_element` does; list indices beyond the number of saved items cannot come from a real save."""
    container: Any = root
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if type(key) is int and key > max_index:
            raise MalformedCheckpoint(f"{where}: list index {key} in its path is out of range")
        if type(container) is list and type(key) is int:
            container.extend([None] * (key + 1 - len(container)))
        elif type(container) is not dict or type(key) is not str:
            raise MalformedCheckpoint(f"{where}: its path {list(path)[:8]} runs through a value that is not a container")
        if last:
            if (container[key] if type(container) is list else container.get(key)) is not None:
                raise MalformedCheckpoint(f"{where}: two saved items have the path {list(path)[:8]}")
            container[key] = value
            return
        child = container[key] if type(container) is list else container.get(key)
        if child is None:
            child = {} if type(path[i + 1]) is str else []
            container[key] = child
        container = child


# ---------------------------------------------------------------------------------------------- the Source
def source_parts(parts: list[dict[str, Any]] | None) -> dict[str, Any]:
    """`source` fields known once every input file is hashed: total size, .metadata's sha256, the parts."""
    return {"size": sum(p["size"] for p in parts) if parts else 0,
            "sha256": parts[0]["sha256"] if parts else PENDING_SHA256, "parts": parts or []}


class DcpSource(Source):
    """A DCP folder as a Source: the tree of `DcpFolder`, every input file hashed on a thread meanwhile."""

    kind = "dcp"

    def __init__(self, path: str | os.PathLike, *, hash: bool = True, converting: bool = False) -> None:
        self.path = Path(path)
        self.copy_files = []
        self.dcp = DcpFolder(self.path, converting=converting)
        self.root = self.dcp.root
        files = [self.dcp.folder / METADATA_NAME, *(self.dcp.folder / name for name in self.dcp.part_names())]
        self._hashes = BackgroundSha256.of_files(files) if hash else None
        # chunks stored as they are: file-to-file in the kernel from each rank file
        self.kernel_copy_sources = [KernelCopySource(p.buf, p.fileno()) for p in self.dcp.parts.values() if p.size]

    def provenance(self) -> dict[str, Any]:
        return {**source_parts(None), "name": self.dcp.folder.resolve().name, "format": SOURCE_FORMAT,
                "pickle_protocol": self.dcp.metadata.protocol}

    def seal(self) -> dict[str, Any]:
        parts = self._hashes.parts() if self._hashes is not None else None
        self.dcp.check_unchanged()  # every byte written came from the files as they were opened
        return source_parts(parts) if parts is not None else {}

    def close(self) -> None:
        if self._hashes is not None:
            self._hashes.__exit__()
        self.root = None
        self.dcp.close()
