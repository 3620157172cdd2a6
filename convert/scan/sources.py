"""The pickle streams inside a file, as the scanner sees them: the file itself, zip members, gzip contents.

A zip is read with the same strict reader as `convert` (read/zipfile_strict.py: the archive exactly as
torch's miniz reads it); an archive it refuses (ambiguous or broken) is searched as a whole for embedded
pickles instead, and the reader pass reports why it was refused. Every size is bounded so that hostile
headers cannot make it allocate more than `MAX_MEMBER` bytes per member.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..model.limits import LIMITS
from ..primitives.source import SourceBytes
from ..read.zipfile_strict import STORED, StrictZip, is_zip

MAX_MEMBER = LIMITS.scan_member_bytes
MAX_DEFLATE_RATIO = LIMITS.deflate_ratio
CARVE_LIMIT = 64 << 20  # bytes searched for embedded pickles in a file that is no known container
MAX_CARVE_CANDIDATES = 20_000


@dataclass
class Stream:
    """One byte stream to walk for pickles."""

    data: Any  # a seekable binary file object
    member: str | None  # zip member name ("archive/data.pkl"), "<gzip content>", or None for the file itself
    base: int | None  # offset of the stream's first byte in the file; None when it was decompressed
    carve: bool = False  # no known container: search it for embedded pickles instead of reading from byte 0


@dataclass
class Sources:
    """What a file is and the streams to walk; `notes` are findings about the container itself."""

    container: str  # "torch-zip" | "zip" | "pickle" | "gzip" | "unknown"
    streams: list[Stream]
    torchscript: str | None = None  # a member that holds TorchScript code, if any
    error: str | None = None  # why the container itself could not be read


class FileBytes:
    """A file's bytes, sliced like `bytes` but read with pread (`SourceBytes`) and never mapped: a file cut
    short while it is scanned is a clean SourceChanged, not SIGBUS. `reader()` is the file itself as a
    stream (a short read at worst)."""

    def __init__(self, file: Any, path: Path) -> None:
        self._file = file
        self._bytes = SourceBytes(file.fileno(), os.fstat(file.fileno()).st_size, path)

    def __len__(self) -> int:
        return len(self._bytes)

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(len(self._bytes))
        return self._bytes.read(start, stop - start)

    def reader(self) -> Any:
        self._file.seek(0)
        return self._file


def open_sources(buf: Any, archive: StrictZip | None = None) -> Sources:
    """Split the file `buf` into pickle streams.

    Args:
        buf: the whole file: a `FileBytes` (or bytes).
        archive: the zip directory the reader already parsed and checked from this same file, if any.

    Returns:
        Sources. A zip yields one stream per `*.pkl` member (every one, duplicates included); a gzip file
        its decompressed content; anything that starts like a pickle the file itself; anything else the file
        itself to be searched for embedded pickles.
    """
    head = bytes(buf[:4])
    if is_zip(head):
        return _zip_sources(buf, archive)
    if head.startswith(b"\x1f\x8b"):
        return _gzip_sources(buf)
    return Sources("pickle", [Stream(_reader(buf), None, 0, carve=not _starts_like_pickle(head))])


def looks_like_checkpoint(path: Any) -> bool:
    """By content only: a zip with a `.pkl` member, or a binary pickle (PROTO 0..5), legacy torch files included.

    Args:
        path: a file path.

    Returns:
        False for anything else, and for files that cannot be opened (the by-content pre-commit hook passes
        every binary file: images, archives and weights in other formats are not our business).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if is_zip(head):
                size = os.fstat(f.fileno()).st_size
                try:
                    members = StrictZip(lambda offset, n: os.pread(f.fileno(), n, offset), size, "zip").members
                    return any(m.name.lower().endswith(".pkl") for m in members)
                except (ConvertError, OSError, struct.error):
                    return True  # a broken or ambiguous zip named by content as ours: scan it (and report it)
    except OSError:
        return False
    return len(head) >= 2 and head[0] == 0x80 and head[1] <= 5


def _starts_like_pickle(head: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80:
        return head[1] <= 5
    return head[:1] in (b"(", b"c", b"}", b"]", b"S", b"I", b"N", b"V", b"X", b"d", b"l", b"t", b"F", b"L", b"U", b"X")


def _reader(buf: Any) -> Any:
    return buf.reader() if isinstance(buf, FileBytes) else io.BytesIO(buf)


def _strict_zip(buf: Any, parsed: StrictZip | None) -> StrictZip:
    """The archive as torch reads it (see read/zipfile_strict.py): `parsed` (the reader's parse of this same
    file) read through `buf`, else parsed here; raises ConvertError where it is refused."""
    def read(offset: int, n: int) -> bytes:
        return bytes(buf[offset:offset + n])
    return parsed.reading_through(read) if parsed is not None else StrictZip(read, len(buf), "zip")


def _zip_sources(buf: Any, parsed: StrictZip | None) -> Sources:
    try:
        archive = _strict_zip(buf, parsed)
    except ConvertError as exc:  # ambiguous or broken: search the whole file for pickles instead
        return Sources("zip", [Stream(_reader(buf), None, 0, carve=True)], error=str(exc))
    names = [m.name for m in archive.members]
    lowered = [n.lower() for n in names]
    torchscript = next((n for n, low in zip(names, lowered) if low.endswith("/constants.pkl") or "/code/" in low), None)
    container = "torch-zip" if any(low.endswith("data.pkl") for low in lowered) else "zip"
    streams, errors = [], []
    for member in archive.members:
        if not member.name.lower().endswith(".pkl"):
            continue
        try:
            data = archive.read(member, MAX_MEMBER, check_crc=False)
        except ConvertError as exc:
            errors.append(f"{member.name}: {exc}")
            continue
        base = member.data_offset if member.method == STORED else None
        streams.append(Stream(io.BytesIO(data), member.name, base))
    return Sources(container, streams, torchscript, "; ".join(errors) or None)


def _gzip_sources(buf: Any) -> Sources:
    raw = bytes(buf[:CARVE_LIMIT])
    try:
        data = zlib.decompressobj(31).decompress(raw, min(MAX_MEMBER, len(raw) * MAX_DEFLATE_RATIO + 1024))
    except zlib.error as exc:
        return Sources("gzip", [], error=f"corrupt gzip data ({exc})")
    return Sources("gzip", [Stream(io.BytesIO(data), "<gzip content>", None, carve=not _starts_like_pickle(data[:2]))])


def carve_candidates(data: Any) -> list[int]:
    """Offsets in the first CARVE_LIMIT bytes where a binary pickle could start (PROTO 2..5)."""
    data.seek(0)
    chunk = data.read(CARVE_LIMIT)
    out: list[int] = []
    at = chunk.find(b"\x80")
    while at >= 0 and len(out) < MAX_CARVE_CANDIDATES:
        if at + 1 < len(chunk) and 2 <= chunk[at + 1] <= 5:
            out.append(at)
        at = chunk.find(b"\x80", at + 1)
    return out
