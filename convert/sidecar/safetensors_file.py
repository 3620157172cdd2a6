"""A safetensors file read as hostile, without torch: every header field is checked first.

The file is mapped copy-on-write (private) and its descriptor closed (`mapping.map_private`):
tensors are zero-copy views the user may modify without touching the file. Entries must lie
inside the data area, must not overlap, and must hold exactly dtype-size × numel bytes.
"""

from __future__ import annotations

import itertools
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import MalformedCheckpoint
from ..model.dtypes import ITEMSIZE_BY_CODE
from ..model.limits import LIMITS
from ..primitives.hashing import sha256_fd
from ..primitives.mapping import map_private
from ..primitives.source import not_regular, open_regular
from .jsonio import strict_json
from .schema import inside_folder

MAX_HEADER = LIMITS.safetensors_header_bytes


@dataclass(frozen=True)
class EntryInfo:
    code: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    nbytes: int


class SafetensorsFile:
    """One validated safetensors file, mapped privately: the header and the mapping, no torch (the loader's
    subclass in convert/load/safetensors_reader.py hands entries out as tensors)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        name = path.name
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            self.identity = (st.st_dev, st.st_ino)  # pinned by the mapping: a reopen must find this same file
            if size < 8:
                raise MalformedCheckpoint(f"{name}: too short to be a safetensors file")
            header_len = int.from_bytes(f.read(8), "little")
            if header_len > MAX_HEADER or 8 + header_len > size:
                raise MalformedCheckpoint(f"{name}: header claims {header_len} bytes, file has {size}")
            header = strict_json(f.read(header_len), name)
            self.map = map_private(f.fileno(), size) if size > 0 else None  # holds no descriptor
        if not isinstance(header, dict):
            raise MalformedCheckpoint(f"{name}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None)
        if self.metadata is not None and not (isinstance(self.metadata, dict)
                                              and all(isinstance(v, str) for v in self.metadata.values())):
            raise MalformedCheckpoint(f"{name}: __metadata__ must map strings to strings")
        data_start, data_len = 8 + header_len, size - 8 - header_len
        self.data_bytes = data_len
        self.entries: dict[str, EntryInfo] = {}
        spans = []
        for key, info in header.items():
            entry = self._entry(name, key, info, data_start, data_len)
            self.entries[key] = entry
            spans.append((entry.start, entry.start + entry.nbytes, key))
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise MalformedCheckpoint(f"{name}: entries {a!r:.60} and {b!r:.60} overlap")
        # As in safetensors itself: the entries tile the data area exactly (no holes, no trailing bytes).
        covered = data_start
        for start, end, key in spans:
            if start > covered:
                raise MalformedCheckpoint(f"{name}: {start - covered} bytes before entry {key!r:.60} belong to no entry")
            covered = max(covered, end)
        if covered != data_start + data_len:
            raise MalformedCheckpoint(f"{name}: {data_start + data_len - covered} bytes after the last entry belong to "
                                      "no entry")

    @staticmethod
    def _entry(name: str, key: str, info: Any, data_start: int, data_len: int) -> EntryInfo:
        # `where` is built only for an error: this runs once per entry, hundreds of thousands of times
        if not (isinstance(info, dict) and len(info) == 3 and "dtype" in info and "shape" in info
                and "data_offsets" in info):
            raise MalformedCheckpoint(f"{name}: entry {key!r:.80} must have exactly dtype, shape and data_offsets")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = ITEMSIZE_BY_CODE.get(code) if isinstance(code, str) else None
        if itemsize is None:
            raise MalformedCheckpoint(f"{name}: entry {key!r:.80} has unknown dtype {code!r:.20}")
        numel = 1
        valid = type(shape) is list and len(shape) <= 64
        if valid:
            for s in shape:
                if type(s) is not int or not 0 <= s < 1 << 62:
                    valid = False
                    break
                numel *= s
        if not valid:
            raise MalformedCheckpoint(f"{name}: entry {key!r:.80} has an invalid shape")
        if not (type(offsets) is list and len(offsets) == 2 and type(offsets[0]) is int and type(offsets[1]) is int
                and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise MalformedCheckpoint(f"{name}: entry {key!r:.80} has data_offsets {offsets!r:.60} outside the "
                                      f"{data_len}-byte data area")
        nbytes = offsets[1] - offsets[0]
        if numel * itemsize != nbytes:
            raise MalformedCheckpoint(f"{name}: entry {key!r:.80}: {code} of shape {shape} needs {numel * itemsize} "
                                      f"bytes, data_offsets give {nbytes}")
        return EntryInfo(code, tuple(shape), data_start + offsets[0], nbytes)

    def sha256(self) -> str:
        """The sha256 of this file's bytes, read with pread on a new descriptor (never through the mapping: a
        file cut short meanwhile is a clean ConvertError, not SIGBUS); MalformedCheckpoint if the path now
        holds another file or another size than the one whose header was checked."""
        fd, st = open_regular(self.path)
        try:
            if (st.st_dev, st.st_ino) != self.identity or st.st_size != (len(self.map) if self.map is not None else 0):
                raise MalformedCheckpoint(f"{self.path.name} was replaced or changed size while it was being checked")
            return sha256_fd(fd, st.st_size, path=self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Let go of the mapping: unmapped now if no tensor shares it (e.g. after a check), else with the last one."""
        if isinstance(self.map, mmap.mmap):
            self.map.close()
        self.map = None


FileT = TypeVar("FileT", bound=SafetensorsFile)


def open_data_file(folder: Path, name: str, cls: type[FileT] = SafetensorsFile) -> FileT:
    """The data file `name` of `folder`, header-checked; it must be a plain file inside the folder."""
    path = folder / name
    if not path.is_file():
        raise MalformedCheckpoint(f"{folder}: {name} {not_regular(path) or 'is missing'}")
    return cls(inside_folder(folder, path))
