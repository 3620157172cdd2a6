"""Write the exported tensors: one safetensors file, or HF shards + index in a folder; atomically.

The bytes stream from the source a tensor at a time (file-to-file in the kernel where nothing is cast,
in bounded pieces through numpy where it is), through the project's one safetensors writer
(`write/safetensors_io.py`). The header carries `{"format": "pt"}`, ckpt-convert's version and the
source's sha256; the digest is computed on a thread while the data is copied, so the header is
written with a placeholder of the same length and the digest put in its place at the end.

OUT is refused if it exists, unless `overwrite` and `ownership.check_replaceable` allows it (an earlier
export: its header says so; never the source): an export never replaces a file (or folder) it did not write.
The source is checked unchanged (its digest, `faults` point after-data) before anything is published.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConvertError, OutputExists, UnsupportedValue
from ..model.dtypes import ITEMSIZE_BY_CODE, NATIVE, NUMPY_TO_DTYPE
from ..model.records import NdArrayRef, TensorRef
from ..model.tensor_bytes import contiguous_source, is_contiguous, ndarray_bytes, tensor_bytes
from ..primitives import faults
from ..primitives.durable import fsync_dir, fsync_fd, rename_noreplace
from ..primitives.hashing import PENDING_SHA256
from ..primitives.lock import WriterLock
from ..primitives.source import SourceBytes
from ..primitives.temp import TempFolder, remove_stale_temporaries
from ..write.folder import build_folder, cannot_write, parents_made
from ..write.ownership import EXPORT_INDEX_NAME, check_replaceable, is_export
from ..write.ownership import EXPORT_MARK_KEY as MARK_KEY
from ..write.plan import Entry
from ..write.safetensors_io import KernelCopySources, header_bytes, layout, write_safetensors
from ..write.shards import index_bytes, shard_name
from .cast import FLOAT_CODES, cast_bytes, cast_chunks

SHA_KEY = "source_sha256"
STEM = "model"
INDEX_NAME = EXPORT_INDEX_NAME
_MAX_HEADER = 100 << 20
READ_CHUNK = 8 << 20  # bytes read from the input at a time for a cast


def metadata(dropped: dict[str, str]) -> dict[str, str]:
    """The header's `__metadata__`: format, version, source digest (placeholder), and tied names
    dropped → kept (what `safetensors.torch.save_model` records, so `load_model` can re-tie them)."""
    meta = {"format": "pt", MARK_KEY: __version__, SHA_KEY: PENDING_SHA256}
    for name, kept in dropped.items():
        meta.setdefault(name, kept)
    return meta


def make_entries(tensors: dict[str, Any], dtype: str | None) -> tuple[list[Entry], int]:
    """One writer entry per tensor (cast to `dtype` where floating); and how many were cast."""
    entries, cast = [], 0
    for name, ref in tensors.items():
        if isinstance(ref, NdArrayRef):
            code, what = NATIVE.get(NUMPY_TO_DTYPE.get(ref.dtype[1:])), ref.dtype  # type: ignore[arg-type]
        else:
            if ref.conj or ref.neg:
                raise UnsupportedValue(f"{name} has torch's conj/neg bit set; resolve it (.resolve_conj()) first")
            code, what = NATIVE.get(ref.dtype), ref.dtype.name
        if code is None:
            raise UnsupportedValue(f"{name} is {what}, which safetensors has no type for")
        target = dtype if dtype and code in FLOAT_CODES else code
        shape = list(ref.shape)
        nbytes = math.prod(shape) * ITEMSIZE_BY_CODE[target]
        if target != code:
            cast += 1
            entries.append(Entry(name, target, shape, nbytes, _cast_data(ref, code, target)))
        elif isinstance(ref, NdArrayRef):
            entries.append(Entry(name, code, shape, nbytes, lambda ref=ref: ndarray_bytes(ref)))
        else:
            entries.append(Entry(name, code, shape, nbytes, lambda ref=ref: tensor_bytes(ref), contiguous_source(ref)))
    return entries, cast


def _cast_data(ref: Any, src: str, dst: str) -> Callable[[], Any]:
    if isinstance(ref, NdArrayRef):
        return lambda: cast_bytes(ndarray_bytes(ref), src, dst)
    return lambda: cast_chunks(_raw_pieces(ref), src, dst)


def _raw_pieces(ref: TensorRef) -> Iterator[Any]:
    """The tensor's bytes in row-major order, a bounded piece at a time where they lie contiguous in the input."""
    source = contiguous_source(ref) if is_contiguous(ref.shape, ref.stride) else None
    if source is None:
        data = tensor_bytes(ref)
        yield from ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data)
        return
    buffer, offset = source
    end = offset + ref.numel * ref.dtype.itemsize
    for start in range(offset, end, READ_CHUNK):
        n = min(READ_CHUNK, end - start)
        yield buffer.read(start, n) if isinstance(buffer, SourceBytes) else memoryview(buffer)[start:start + n]


def assign(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Greedy in name order, as huggingface_hub splits: a new shard when the next tensor would overflow."""
    shards: list[list[Entry]] = [[]]
    filled = 0
    for entry in entries:
        if shards[-1] and filled + entry.nbytes > max_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(entry)
        filled += entry.nbytes
    return shards


def write_one(path: Path, entries: list[Entry], meta: dict[str, str], kernel: KernelCopySources) -> int:
    """Write a new safetensors file at `path`; returns the byte position of the digest placeholder."""
    header = header_bytes(layout(entries), meta)
    at = header.find(f'"{SHA_KEY}":"{PENDING_SHA256}"'.encode())
    with open(path, "xb") as out:
        write_safetensors(out, entries, meta, kernel_copy_source=kernel)
        fsync_fd(out.fileno())  # the writeback overlaps the source's digest, still running; `seal` flushes one page
    return at + len(f'"{SHA_KEY}":"'.encode())


def seal(path: Path, at: int, digest: str) -> None:
    """Put the source digest in place of the placeholder, and make the file durable."""
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if os.pwrite(fd, digest.encode("ascii"), at) != len(digest):
            raise OSError("short write")
        fsync_fd(fd)
    finally:
        os.close(fd)


def _check_destination(dst: Path, overwrite: bool, sources: Sequence[str | os.PathLike]) -> None:
    if os.path.lexists(dst) and not overwrite:
        raise OutputExists.for_path(dst)
    if overwrite:
        check_replaceable(dst, sources, file=True)


def write_file(dst: Path, entries: list[Entry], meta: dict[str, str], kernel: KernelCopySources,
               digest: Callable[[], str], *, overwrite: bool, sources: Sequence[str | os.PathLike] = ()) -> None:
    """OUT as one file: written in a marked temporary folder beside it, then renamed into place.
    `sources`: what the export reads (never replaced, see `check_replaceable`)."""
    try:
        remove_stale_temporaries(dst.parent, dst.name)
        _check_destination(dst, overwrite, sources)
        with parents_made(dst.parent), WriterLock(dst) if overwrite else contextlib.nullcontext():
            temp = TempFolder.create(dst)
            try:
                built = temp.build / dst.name
                at = write_one(built, entries, meta, kernel)
                faults.point("after-data")
                seal(built, at, digest())  # digest(): raises SourceChanged if the source changed meanwhile
                fsync_dir(temp.build)
                if overwrite and os.path.lexists(dst):
                    _check_destination(dst, overwrite, sources)  # again, under the lock
                    os.replace(built, dst)  # a file: replaced in one step, a complete OUT at every instant
                else:
                    try:
                        rename_noreplace(built, dst)
                    except FileExistsError:
                        raise OutputExists.for_path(dst, "created meanwhile by another run") from None
                fsync_dir(dst.parent)
            finally:
                temp.remove()
    except OSError as exc:
        error = cannot_write(dst, exc)
        if error is None:
            raise
        raise error from None


def write_sharded(dst: Path, entries: list[Entry], meta: dict[str, str], kernel: KernelCopySources,
                  digest: Callable[[], str], max_bytes: int, *, overwrite: bool,
                  sources: Sequence[str | os.PathLike] = ()) -> dict[str, int]:
    """OUT as an HF folder: `model.safetensors`, or `model-0000N-of-0000M.safetensors` + the index; the
    folder writer's guarantees and ownership rule (`build_folder`)."""
    shards = assign(entries, max_bytes)
    names = [f"{STEM}.safetensors"] if len(shards) == 1 else \
        [shard_name(STEM, i + 1, len(shards)) for i in range(len(shards))]

    def fill(folder: Path) -> None:
        placeholders = [(folder / name, write_one(folder / name, shard, meta, kernel)) for name, shard in zip(names, shards)]
        faults.point("after-data")
        sha = digest()  # raises SourceChanged if the source changed meanwhile
        for path, at in placeholders:
            seal(path, at, sha)
        if len(shards) > 1:
            weight_map = {e.key: name for name, shard in zip(names, shards) for e in shard}
            with open(folder / INDEX_NAME, "wb") as out:
                out.write(index_bytes(weight_map, sum(e.nbytes for e in entries)))
                out.flush()
                fsync_fd(out.fileno())
        fsync_dir(folder)

    build_folder(dst, fill, overwrite=overwrite, sources=sources)
    return {name: len(shard) for name, shard in zip(names, shards)}


__all__ = ["MARK_KEY", "SHA_KEY", "ConvertError", "assign", "is_export", "make_entries", "metadata",
           "write_file", "write_sharded"]
