"""A strict zip reader: the archive exactly as torch's miniz reads it, refused where Python's zipfile would not agree.

torch.load reads a checkpoint with miniz (PyTorchStreamReader); scanners and this tool used to read it
with Python's `zipfile`. The two disagree on hostile archives, and a scanner that reads other bytes
than the loader vouches for nothing. This reader therefore accepts only archives on which both agree:

* the end-of-central-directory record (EOCD) is the last 22 bytes of the file (miniz takes the last
  signature with 22 bytes after it; zipfile first tries exactly there): no comment, no trailing bytes;
* a ZIP64 locator right before it points to the ZIP64 record right before the locator (miniz follows
  the locator's offset, zipfile assumes the record sits just before the locator);
* the central directory ends where the (ZIP64) EOCD starts (zipfile shifts every offset by any
  "prepended data", miniz takes offsets literally) and holds exactly the entries it declares;
* members tile the file from byte 0 to the central directory with no gap (no hidden bytes; an overlap
  is a zip bomb), each local header naming the same name and method as its central entry, sizes and CRC
  agreeing (in the local header or its data descriptor);
* no two names equal case-insensitively (miniz looks names up ignoring ASCII case), no NUL in a name
  (zipfile cuts the name there), non-ASCII names only when flagged UTF-8.

Where the readers could disagree the archive is refused with `ZipAmbiguous` (an UnsafeCheckpoint:
`scan` says unsafe, `convert` refuses); where it is merely broken, with MalformedCheckpoint.
Decompression is streamed with a budget checked before anything is allocated.
"""

from __future__ import annotations

import copy
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MalformedCheckpoint, UnsafeCheckpoint, UnsupportedValue
from ..model.limits import LIMITS
from .vm import Finding

EOCD_SIG, LOCATOR_SIG, ZIP64_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
CENTRAL_SIG, LOCAL_SIG, DESCRIPTOR_SIG = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
EOCD_SIZE, LOCATOR_SIZE, ZIP64_SIZE, CENTRAL_SIZE, LOCAL_SIZE = 22, 20, 56, 46, 30
STORED, DEFLATED = 0, 8
MAX_ENTRIES = LIMITS.zip_entries
INFLATE_CHUNK = 1 << 20  # compressed bytes fed to zlib at a time
MAX_DEFLATE_RATIO = LIMITS.deflate_ratio
_U32 = 0xFFFFFFFF


class ZipAmbiguous(UnsafeCheckpoint):
    """torch (miniz) and Python's zipfile would read different things from this archive."""

    def __init__(self, label: str, why: str) -> None:
        super().__init__(f"{label}: zip archive is ambiguous ({why}): torch and other zip readers could read "
                         "different contents; refused", [Finding("zip parser differential", why)])


@dataclass(frozen=True)
class Member:
    """One central-directory entry, checked against its local header."""

    name: str
    raw_name: bytes
    method: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int
    data_offset: int  # first byte of the (compressed) data


def is_zip(head: bytes) -> bool:
    """Whether torch.load reads a file starting with `head` as a zip: it checks for a local header at byte 0
    (`torch.serialization._is_zipfile`); anything else, an empty zip included, goes to its pickle path."""
    return head.startswith(LOCAL_SIG)


def sniff_zip(path: str | os.PathLike) -> bool:
    """Cheap by-content check for walkers: does the file at `path` start like a zip? False if unreadable."""
    try:
        with open(path, "rb") as f:
            return is_zip(f.read(4))
    except OSError:
        return False


class StrictZip:
    """The members of a zip archive read as miniz reads them (see module doc). Raises on construction.

    Args:
        read: `read(offset, n)` returns exactly n bytes of the archive at offset.
        size: the archive's size in bytes.
        label: the name used in messages.
    """

    def __init__(self, read: Callable[[int, int], bytes], size: int, label: str) -> None:
        self._read, self.size, self.label = read, size, label
        cdir_ofs, cdir_size, entries = self._locate()
        self.members = self._central(cdir_ofs, cdir_size, entries)
        self._by_key: dict[bytes, Member] = {}
        for m in self.members:
            key = m.raw_name.lower()  # miniz's MZ_TOLOWER: ASCII only, like bytes.lower
            if key in self._by_key:
                other = self._by_key[key].name
                same = "the same name" if other == m.name else "names equal ignoring case"
                raise ZipAmbiguous(label, f"two members with {same}: {other!r} and {m.name!r}")
            self._by_key[key] = m
        self._check_tiling(cdir_ofs)

    # ------------------------------------------------------------------ directory

    def _bad(self, why: str) -> MalformedCheckpoint:
        return MalformedCheckpoint(f"{self.label}: corrupt zip archive ({why})")

    def _locate(self) -> tuple[int, int, int]:
        if self.size < EOCD_SIZE:
            raise self._bad("too short for an end-of-central-directory record")
        eocd_at = self.size - EOCD_SIZE
        eocd = self._read(eocd_at, EOCD_SIZE)
        if eocd[:4] != EOCD_SIG:
            found = self._last_eocd()
            if found is None:
                raise self._bad("no end-of-central-directory record")
            raise ZipAmbiguous(self.label, f"{self.size - found - EOCD_SIZE} bytes after the end-of-central-directory "
                                           "record (a comment or trailing data)")
        disk, cd_disk, on_disk, total, cdir_size, cdir_ofs, comment = struct.unpack("<HHHHIIH", eocd[4:])
        if comment:
            raise ZipAmbiguous(self.label, "an end-of-central-directory comment length that overruns the file")
        end_of_cdir = eocd_at
        if eocd_at >= LOCATOR_SIZE and self._read(eocd_at - LOCATOR_SIZE, 4) == LOCATOR_SIG:
            loc = self._read(eocd_at - LOCATOR_SIZE, LOCATOR_SIZE)
            loc_disk, record_at, disks = struct.unpack("<IQI", loc[4:])
            expected = eocd_at - LOCATOR_SIZE - ZIP64_SIZE
            if record_at != expected:  # miniz reads the record at `record_at`, zipfile at `expected`
                raise ZipAmbiguous(self.label, f"the ZIP64 locator points to byte {record_at}, not to the record "
                                               f"right before it at byte {expected}")
            if loc_disk != 0 or disks != 1:
                raise UnsupportedValue(f"{self.label}: multi-disk zip archive; not supported")
            rec = self._read(expected, ZIP64_SIZE) if expected >= 0 else b""
            if rec[:4] != ZIP64_SIG:
                raise self._bad("the ZIP64 locator points to no ZIP64 end-of-central-directory record")
            plain = (on_disk, total, cdir_size, cdir_ofs)
            rec_size, _, _, disk, cd_disk, on_disk, total, cdir_size, cdir_ofs = struct.unpack("<QHHIIQQQQ", rec[4:])
            if rec_size != ZIP64_SIZE - 12:
                raise ZipAmbiguous(self.label, "a ZIP64 record with extensible data")
            for value, wide, full in zip(plain, (on_disk, total, cdir_size, cdir_ofs), (0xFFFF, 0xFFFF, _U32, _U32)):
                if value not in (full, wide):  # a reader preferring the 32-bit value would read another directory
                    raise ZipAmbiguous(self.label, "the ZIP64 record and the end-of-central-directory record disagree")
            end_of_cdir = expected
        if disk != 0 or cd_disk != 0 or on_disk != total:
            raise UnsupportedValue(f"{self.label}: multi-disk zip archive; not supported")
        if cdir_ofs + cdir_size != end_of_cdir:  # zipfile would shift every offset by the difference
            raise ZipAmbiguous(self.label, f"the central directory is declared at byte {cdir_ofs} ({cdir_size} bytes) "
                                           f"but ends at byte {end_of_cdir} (prepended or inserted data)")
        if total > MAX_ENTRIES or total * CENTRAL_SIZE > cdir_size:
            raise self._bad(f"{total} entries cannot fit a {cdir_size}-byte central directory")
        return cdir_ofs, cdir_size, total

    def _last_eocd(self) -> int | None:
        """Where miniz would find an EOCD signature (the last one with 22 bytes after it), searching 64 KiB back."""
        end = self.size - EOCD_SIZE
        lo = max(0, end - 0xFFFF - EOCD_SIZE)
        tail = self._read(lo, end + 4 - lo)
        at = tail.rfind(EOCD_SIG)
        return None if at < 0 else lo + at

    def _central(self, cdir_ofs: int, cdir_size: int, total: int) -> list[Member]:
        cdir = self._read(cdir_ofs, cdir_size)
        members: list[Member] = []
        pos = 0
        for _ in range(total):
            if cdir[pos:pos + 4] != CENTRAL_SIG or pos + CENTRAL_SIZE > len(cdir):
                raise self._bad(f"central directory entry {len(members)} is damaged")
            (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, disk, _, _,
             header_at) = struct.unpack("<HHHHHHIIIHHHHHII", cdir[pos + 4:pos + CENTRAL_SIZE])
            name_at = pos + CENTRAL_SIZE
            end = name_at + name_len + extra_len + comment_len
            if end > len(cdir):
                raise self._bad(f"central directory entry {len(members)} runs past the directory")
            raw = bytes(cdir[name_at:name_at + name_len])
            extra = bytes(cdir[name_at + name_len:name_at + name_len + extra_len])
            usize, csize, header_at = self._zip64_extra(extra, usize, csize, header_at, raw)
            name = self._name(raw, flags)
            if flags & 1:
                raise UnsupportedValue(f"{self.label}: zip member {name!r} is encrypted; not supported")
            if method not in (STORED, DEFLATED):
                raise UnsupportedValue(f"{self.label}: zip member {name!r} uses compression method {method}; "
                                       "only stored and deflated members are read")
            if method == STORED and csize != usize:
                raise self._bad(f"stored member {name!r} declares {csize} compressed and {usize} plain bytes")
            if disk not in (0, 0xFFFF):
                raise UnsupportedValue(f"{self.label}: multi-disk zip archive; not supported")
            data_at = self._local(raw, name, flags, method, crc, csize, usize, header_at, cdir_ofs)
            members.append(Member(name, raw, method, crc, csize, usize, header_at, data_at))
            pos = end
        if pos != len(cdir):
            raise ZipAmbiguous(self.label, f"{len(cdir) - pos} bytes in the central directory after its {total} entries")
        return members

    def _name(self, raw: bytes, flags: int) -> str:
        if b"\x00" in raw:  # zipfile cuts the name at a NUL, miniz does not
            raise ZipAmbiguous(self.label, f"a member name with a NUL byte ({raw!r:.80})")
        if flags & 0x800:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._bad(f"member name {raw!r:.80} is not valid UTF-8") from None
        if not raw.isascii():  # zipfile decodes cp437, miniz compares bytes
            raise ZipAmbiguous(self.label, f"a non-ASCII member name not flagged UTF-8 ({raw!r:.80})")
        return raw.decode("ascii")

    def _zip64_extra(self, extra: bytes, usize: int, csize: int, header_at: int, raw: bytes) -> tuple[int, int, int]:
        """Parse the extra fields (they must tile exactly); apply the ZIP64 field for values saturated at 2**32-1."""
        fields: dict[int, bytes] = {}
        pos = 0
        while pos < len(extra):
            if pos + 4 > len(extra):
                raise self._bad(f"member {raw!r:.80} has a truncated extra field")
            kind, length = struct.unpack("<HH", extra[pos:pos + 4])
            if pos + 4 + length > len(extra) or kind in fields:
                raise self._bad(f"member {raw!r:.80} has a damaged extra field")
            fields[kind] = extra[pos + 4:pos + 4 + length]
            pos += 4 + length
        wanted = [v == _U32 for v in (usize, csize, header_at)]
        z64 = fields.get(1)
        if not any(wanted):
            return usize, csize, header_at
        if z64 is None or len(z64) < 8 * sum(wanted):
            raise self._bad(f"member {raw!r:.80} needs a ZIP64 extra field it does not have")
        values = iter(struct.unpack(f"<{sum(wanted)}Q", z64[:8 * sum(wanted)]))
        usize, csize, header_at = (next(values) if w else v for w, v in zip(wanted, (usize, csize, header_at)))
        return usize, csize, header_at

    def _local(self, raw: bytes, name: str, flags: int, method: int, crc: int, csize: int, usize: int,
               header_at: int, cdir_ofs: int) -> int:
        if header_at + LOCAL_SIZE > cdir_ofs:
            raise self._bad(f"member {name!r} has no local header before the central directory")
        head = self._read(header_at, LOCAL_SIZE)
        if head[:4] != LOCAL_SIG:
            raise self._bad(f"member {name!r} has no local header")
        _, lflags, lmethod, _, _, lcrc, lcsize, lusize, name_len, extra_len = struct.unpack("<HHHHHIIIHH", head[4:])
        data_at = header_at + LOCAL_SIZE + name_len + extra_len
        if data_at + csize > cdir_ofs:
            raise self._bad(f"member {name!r} runs into the central directory (truncated?)")
        lname = self._read(header_at + LOCAL_SIZE, name_len)
        # Both readers take name, sizes and method from the central directory (zipfile refuses a name mismatch):
        # a local header that disagrees is broken, not read two ways.
        if lname != raw:
            raise self._bad(f"member {name!r} is named {lname!r:.80} in its local header")
        if lmethod != method or (lflags ^ flags) & 0x809:
            raise self._bad(f"member {name!r}: local header and central directory disagree on compression or flags")
        if not flags & 8:
            local = (lcrc, lcsize, lusize)
            if local != (crc, csize, usize) and not (lcsize == lusize == _U32 and lcrc == crc):
                raise self._bad(f"member {name!r}: local header and central directory disagree on sizes or CRC")
        return data_at

    def _check_tiling(self, cdir_ofs: int) -> None:
        """Members must cover [0, cdir_ofs) exactly, in order: no prepended, hidden or overlapping bytes."""
        at = 0
        for m in sorted(self.members, key=lambda m: m.header_offset):
            if m.header_offset < at:  # a non-recursive zip bomb, or one member's bytes read as another's
                raise self._bad(f"member {m.name!r} overlaps the member before it")
            if m.header_offset > at:  # a streaming reader would find whatever hides there
                what = "prepended data" if at == 0 else "bytes no member accounts for"
                raise ZipAmbiguous(self.label, f"{what} at byte {at} (before member {m.name!r})")
            at = m.data_offset + m.compress_size
            at += self._descriptor(m, at, cdir_ofs)
        if at != cdir_ofs:
            raise ZipAmbiguous(self.label, f"{cdir_ofs - at} bytes no member accounts for before the central directory")

    def _descriptor(self, m: Member, at: int, cdir_ofs: int) -> int:
        """Length of the data descriptor after member `m` (0 if its header has the sizes), checked."""
        head = self._read(m.header_offset + 6, 2)
        if not int.from_bytes(head, "little") & 8:
            return 0
        tail = self._read(at, min(24, cdir_ofs - at))
        for length, fmt in ((24, "<4sIQQ"), (16, "<4sIII")):  # with signature; ZIP64 or not
            if len(tail) >= length and tail[:4] == DESCRIPTOR_SIG:
                _, crc, csize, usize = struct.unpack(fmt, tail[:length])
                if (crc, csize, usize) == (m.crc, m.compress_size, m.file_size):
                    return length
        for length, fmt in ((20, "<IQQ"), (12, "<III")):
            if len(tail) >= length and struct.unpack(fmt, tail[:length]) == (m.crc, m.compress_size, m.file_size):
                return length
        raise self._bad(f"member {m.name!r}: its data descriptor disagrees with the central directory")

    # ------------------------------------------------------------------ members

    def reading_through(self, read: Callable[[int, int], bytes]) -> StrictZip:
        """This archive's checked directory, its members read through `read` (another descriptor on the very
        same file: scan's opcode walk reuses the reader's parse, having checked the file's identity)."""
        other = copy.copy(self)
        other._read = read
        return other

    def get(self, name: str) -> Member | None:
        """The member named `name`, looked up as miniz does (ignoring ASCII case)."""
        return self._by_key.get(name.encode("utf-8").lower())

    def read(self, m: Member, limit: int, *, check_crc: bool = True) -> bytes:
        """The member's bytes, CRC-checked; refuses before allocating if it declares more than `limit` bytes.

        `check_crc=False` is for the scanner: a bad CRC must not hide a payload from it."""
        if m.file_size > limit or (m.method == DEFLATED and m.file_size > m.compress_size * MAX_DEFLATE_RATIO + 1024):
            raise MalformedCheckpoint(f"{self.label}: zip member {m.name!r} declares {m.file_size} bytes; refusing")
        data = self._read(m.data_offset, m.file_size) if m.method == STORED else self._inflate(m)
        if check_crc and zlib.crc32(data) != m.crc:
            raise MalformedCheckpoint(f"{self.label}: zip member {m.name!r} fails its CRC check")
        return data

    def _inflate(self, m: Member) -> bytes:
        """Stream-inflate, never producing more than the declared size; the stream must end exactly there."""
        inflater = zlib.decompressobj(-15)
        out = bytearray()
        pos, end = m.data_offset, m.data_offset + m.compress_size
        try:
            while not inflater.eof:
                if inflater.unconsumed_tail:
                    chunk = inflater.unconsumed_tail
                elif pos < end:
                    chunk = self._read(pos, min(INFLATE_CHUNK, end - pos))
                    pos += len(chunk)
                else:
                    break
                out += inflater.decompress(chunk, m.file_size - len(out) + 1)  # max_length >= 1: never unbounded
                if len(out) > m.file_size:
                    raise MalformedCheckpoint(f"{self.label}: zip member {m.name!r} inflates to more than the "
                                              f"{m.file_size} bytes it declares")
        except zlib.error as exc:
            raise MalformedCheckpoint(f"{self.label}: zip member {m.name!r} is corrupt ({exc})") from None
        if not inflater.eof or len(out) != m.file_size or inflater.unused_data or inflater.unconsumed_tail:
            raise MalformedCheckpoint(f"{self.label}: zip member {m.name!r} size does not match its header")
        return bytes(out)

