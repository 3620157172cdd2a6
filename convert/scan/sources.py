"""The pickle streams inside a file, as the scanner sees them: the file itself, zip members, gzip contents.

Bytes are taken as stored, without the reader's consistency checks (a CRC mismatch, an odd flag bit or a
duplicate member does not hide a payload from a scanner), but every size is bounded so that hostile
headers cannot make it allocate more than `MAX_MEMBER` bytes per member.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

MAX_MEMBER = 1 << 30  # bytes of one decompressed pickle member (or gzip content) scanned at most
MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than ~1032x
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


def open_sources(buf: Any, file: Any) -> Sources:
    """Split the mmapped file `buf` into pickle streams.

    Args:
        buf: the whole file, as an mmap (or bytes).
        file: the same file, opened for reading (zipfile reads its directory from it).

    Returns:
        Sources. A zip yields one stream per `*.pkl` member (every one, duplicates included); a gzip file
        its decompressed content; anything that starts like a pickle the file itself; anything else the file
        itself to be searched for embedded pickles.
    """
    head = bytes(buf[:4])
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_sources(buf, file)
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
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                try:
                    return any(n.endswith(".pkl") for n in zipfile.ZipFile(f).namelist())
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
                    return True  # a broken zip named by content as ours: scan it (and report it unreadable)
    except OSError:
        return False
    return len(head) >= 2 and head[0] == 0x80 and head[1] <= 5


def _starts_like_pickle(head: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80:
        return head[1] <= 5
    return head[:1] in (b"(", b"c", b"}", b"]", b"S", b"I", b"N", b"V", b"X", b"d", b"l", b"t", b"F", b"L", b"U", b"X")


def _reader(buf: Any) -> Any:
    return buf if hasattr(buf, "seek") else io.BytesIO(buf)


def _zip_sources(buf: Any, file: Any) -> Sources:
    try:
        infos = zipfile.ZipFile(file).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        return Sources("zip", [Stream(_reader(buf), None, 0, carve=True)], error=f"corrupt zip archive ({exc})")
    names = [i.filename for i in infos]
    torchscript = next((n for n in names if n.endswith("/constants.pkl") or "/code/" in n), None)
    container = "torch-zip" if any(n.endswith("data.pkl") for n in names) else "zip"
    streams, errors = [], []
    seen: dict[str, int] = {}
    for info in infos:
        if not info.filename.endswith(".pkl"):
            continue
        seen[info.filename] = seen.get(info.filename, 0) + 1
        label = info.filename if seen[info.filename] == 1 else f"{info.filename} (copy {seen[info.filename]})"
        try:
            data, base = _member_bytes(buf, info)
        except ValueError as exc:
            errors.append(f"{label}: {exc}")
            continue
        streams.append(Stream(io.BytesIO(data), label, base))
    return Sources(container, streams, torchscript, "; ".join(errors) or None)


def _member_bytes(buf: Any, info: zipfile.ZipInfo) -> tuple[bytes, int | None]:
    """The member's bytes as stored (stored: a slice of the file; deflated: inflated, bounded)."""
    at, size = info.header_offset, len(buf)
    if at + 30 > size or bytes(buf[at:at + 4]) != b"PK\x03\x04":
        raise ValueError("no local header")
    name_len, extra_len = struct.unpack("<HH", bytes(buf[at + 26:at + 30]))
    start = at + 30 + name_len + extra_len
    raw_end = min(size, start + info.compress_size)
    if info.compress_type == zipfile.ZIP_STORED:
        return bytes(buf[start:min(raw_end, start + MAX_MEMBER)]), start
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise ValueError(f"compression method {info.compress_type} is not read by the scanner")
    cap = min(MAX_MEMBER, (raw_end - start) * MAX_DEFLATE_RATIO + 1024)
    try:
        return zlib.decompressobj(-15).decompress(bytes(buf[start:raw_end]), cap), None
    except zlib.error as exc:
        raise ValueError(f"corrupt deflate data ({exc})") from None


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
