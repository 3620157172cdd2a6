"""Recognise the container and run the pickle VM over it: torch zip, legacy torch, plain pickle.

Every storage the pickle refers to is matched to real bytes of the input here: a zip member whose
local header agrees with the central directory and whose size is what the pickle declares, or a
legacy storage record whose length prefix agrees. The input is only ever read, with pread (see
source.py): never mapped, so a file truncated underneath is a clean error rather than SIGBUS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MalformedCheckpoint, NotACheckpoint, UnsafeCheckpoint, UnsupportedValue
from ..model.limits import LIMITS
from ..model.records import GlobalRef, StorageRef
from ..model.torch_types import QUANTIZED_STORAGES, STORAGE_DTYPES, STORAGE_MODULES
from ..primitives.source import Identity, SourceBytes, SourceChanged, open_regular
from .framing import FramedVM, PickleAmbiguous, is_tar_header, run_checked
from .vm import Finding, PickleVM
from .zipfile_strict import STORED, StrictZip, ZipAmbiguous, is_zip

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_PICKLE_MEMBER = LIMITS.pickle_member_bytes

_SIGNATURES: list[tuple[bytes, int, str]] = [
    (b"\x1f\x8b", 0, "a gzip-compressed file: decompress it first (gunzip)"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7z archive: extract it first"),
    (b"BZh", 0, "a bzip2-compressed file: decompress it first"),
    (b"\xfd7zXZ\x00", 0, "an xz-compressed file: decompress it first"),
    (b"\x28\xb5\x2f\xfd", 0, "a zstd-compressed file: decompress it first"),
    (b"\x93NUMPY", 0, "a numpy .npy file, not a pickled checkpoint"),
]


@dataclass
class ReadResult:
    """What the container and VM produced: the raw tree (with TensorRef/ObjectRecord/...)."""

    root: Any
    format: str  # "torch-zip" | "torch-legacy" | "pickle"
    protocol: int
    storages: list[StorageRef]
    globals_used: dict[str, int]
    findings: list[Finding] = field(default_factory=list)


class Input:
    """The input file: a regular file, opened read-only, read with pread. Use as a context manager.

    `buf` (a `SourceBytes`) reads its bytes; `identity` is the file's identity when opened, and
    `check_unchanged()` raises SourceChanged if the file (by descriptor or by path) differs now.
    Leaving the `with` block on an exception while the file has changed raises SourceChanged instead,
    so a failure caused by a concurrent rewrite is reported as that.

    Args:
        path: the checkpoint file.
        converting: word the SourceChanged message for `convert` ("...; nothing was written").
    """

    def __init__(self, path: str | os.PathLike, *, converting: bool = False) -> None:
        self.path = Path(path)
        self.converting = converting
        fd, st = open_regular(self.path)
        self._file = os.fdopen(fd, "rb")  # owns the descriptor; every read is a pread on it
        self.identity = Identity.of(st)
        self.archive: StrictZip | None = None  # the zip directory, once the reader has parsed and checked it
        self.size = st.st_size
        if self.size == 0:
            self._file.close()
            raise MalformedCheckpoint(f"{self.path.name}: empty file")
        self.buf = SourceBytes(fd, self.size, self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def fileno(self) -> int:
        return self._file.fileno()

    def read(self, offset: int, n: int) -> bytes:
        """Exactly `n` bytes of the file at `offset` (see SourceBytes.read)."""
        return self.buf.read(offset, n)

    def changed(self) -> bool:
        """True if the open file or the file now at `path` is not the one (or not as it was) when opened."""
        if self._file.closed:
            return False
        try:
            now_fd = Identity.of(os.fstat(self._file.fileno()))
            now_path = Identity.of(os.stat(self.path))
        except OSError:  # the path is gone (deleted or renamed away)
            return True
        return now_fd != self.identity or now_path != self.identity

    def changed_error(self) -> SourceChanged:
        doing = "converted; nothing was written" if self.converting else "read"
        return SourceChanged(f"{self.path} changed while it was being {doing}")

    def check_unchanged(self) -> None:
        """Raise SourceChanged if the file changed since it was opened."""
        if self.changed():
            raise self.changed_error()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Input:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is not None and not isinstance(exc, KeyboardInterrupt) and self.changed():
                error = self.changed_error()
                if str(exc) != str(error):  # not already this very report
                    raise error from None
        finally:
            self.close()


def read_container(inp: Input) -> ReadResult:
    """Detect the format of `inp` and interpret it. Raises a ConvertError subclass on any problem."""
    head = inp.read(0, min(512, inp.size))
    if is_tar_header(head):  # torch's legacy path tries tarfile first: whatever it accepts is read as a tar
        if is_zip(head):  # torch reads a zip first, older torch and tar tools a tar: refuse the polyglot
            raise ZipAmbiguous(inp.name, "its first block is also a valid tar header")
        _refuse_tar(inp)
    for magic, offset, what in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedValue(f"{inp.name} is {what}")
    if is_zip(head):
        return _tag_format(_read_zip, inp, "torch-zip")
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < inp.size:
        raise UnsupportedValue(f"{inp.name} looks like a safetensors file already; nothing to convert")
    return _tag_format(_read_pickle_or_legacy, inp, "pickle")


def _refuse_tar(inp: Input) -> None:
    """A tar is not read here; one that also reads as a pickle (a polyglot) is refused as ambiguous."""
    try:
        FramedVM(inp.buf, source=inp.name).run()
    except MalformedCheckpoint:
        raise UnsupportedValue(f"{inp.name} is a tar archive (torch.load reads it as the pre-2017 torch.save "
                               "format): not supported") from None
    except UnsafeCheckpoint:
        pass
    raise PickleAmbiguous(inp.name, "a tar archive (torch.load reads it with tarfile) that also reads as a pickle")


def _tag_format(reader: Any, inp: Input, fmt: str) -> ReadResult:
    try:
        return reader(inp)
    except UnsafeCheckpoint as exc:  # `scan` reports the container format even for refused files
        exc.format = getattr(exc, "format", None) or fmt
        raise


# ----------------------------------------------------------------------------------- torch zip

def _storage_dtype(storage_type: Any, source: str) -> Any:
    if not isinstance(storage_type, GlobalRef) or storage_type.module not in STORAGE_MODULES:
        raise MalformedCheckpoint(f"{source}: storage type {storage_type!r:.60} is not a torch storage class")
    if storage_type.name in QUANTIZED_STORAGES:  # the tensor on it is reported, by key, as unsupported
        return QUANTIZED_STORAGES[storage_type.name]
    if storage_type.name not in STORAGE_DTYPES:
        raise MalformedCheckpoint(f"{source}: unknown storage type {storage_type.qualname}")
    return STORAGE_DTYPES[storage_type.name]


def _location(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if type(value) is not str or len(value) > 64:
        raise MalformedCheckpoint("storage location must be a short string")
    return value


def _numel(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 1 << 62:
        raise MalformedCheckpoint(f"storage size {value!r:.40} is not a valid element count")
    return value


class _ZipArchive:
    """A torch zip checkpoint read as torch reads it (zipfile_strict): the archive folder named by the first
    entry, `<folder>/data.pkl`, and the `data/<key>` records the pickle names, each read once."""

    def __init__(self, inp: Input) -> None:
        self.inp = inp
        self.zip = inp.archive = StrictZip(inp.read, inp.size, inp.name)
        members = self.zip.members
        if not members:
            raise MalformedCheckpoint(f"{inp.name}: empty zip archive; not a torch checkpoint")
        code = next((m.name for m in members if m.name.lower().endswith("/constants.pkl") or "/code/" in m.name.lower()),
                    None)
        if code is not None:
            raise UnsafeCheckpoint(f"{inp.name} is a TorchScript archive: it holds compiled code that torch.jit.load "
                                   "would run; it is not converted (export its state_dict instead)",
                                   [Finding("TorchScript code", f"{inp.name}: {code}")])
        first = members[0].name  # torch (PyTorchStreamReader) takes the archive folder from the first entry
        if "/" not in first:
            raise MalformedCheckpoint(f"{inp.name}: zip archive whose first member {first!r:.80} is in no folder; "
                                      "not a torch checkpoint")
        self.prefix = first[:first.index("/") + 1]
        stray = next((m.name for m in members if not m.name.startswith(self.prefix)), None)
        if stray is not None:  # torch never reads it; another tool might
            raise ZipAmbiguous(inp.name, f"member {stray!r:.80} outside the archive folder {self.prefix!r}")
        self.pickle = self.zip.get(self.prefix + "data.pkl")
        if self.pickle is None:
            raise MalformedCheckpoint(f"{inp.name}: zip archive with no '{self.prefix}data.pkl' member; "
                                      "not a torch checkpoint")
        order = self.zip.get(self.prefix + "byteorder")
        if order is not None and self.zip.read(order, 16).strip() not in (b"little", b""):
            raise UnsupportedValue(f"{inp.name} was saved on a big-endian machine; not supported")
        self.storages: dict[str, StorageRef] = {}

    def pickle_bytes(self) -> bytes:
        return self.zip.read(self.pickle, MAX_PICKLE_MEMBER)

    def persistent_load(self, pid: Any) -> StorageRef:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise MalformedCheckpoint(f"{self.inp.name}: unknown persistent id {pid!r:.80}")
        _, storage_type, key, location, numel = pid
        if type(key) is not str or not key or "/" in key or ".." in key:
            raise MalformedCheckpoint(f"{self.inp.name}: bad storage key {key!r:.40}")
        dtype = _storage_dtype(storage_type, self.inp.name)
        if key in self.storages:
            return self.storages[key]
        nbytes = _numel(numel) * dtype.itemsize
        member = self.zip.get(f"{self.prefix}data/{key}")
        if member is None:
            raise MalformedCheckpoint(f"{self.inp.name}: storage {key!r} has no record in the archive")
        if member.file_size != nbytes:
            raise MalformedCheckpoint(f"{self.inp.name}: storage {key!r} declares {nbytes} bytes but the archive "
                                      f"holds {member.file_size}")
        storage = StorageRef(key, dtype, nbytes, _location(location))
        if member.method == STORED:
            storage.buffer, storage.offset = self.inp.buf, member.data_offset  # read later, with pread
        else:
            storage.buffer = self.zip.read(member, nbytes)
        self.storages[key] = storage
        return storage


def _read_zip(inp: Input) -> ReadResult:
    archive = _ZipArchive(inp)
    data = archive.pickle_bytes()
    source = f"{inp.name}:{archive.prefix}data.pkl"
    vm = FramedVM(data, source=source, persistent_load=archive.persistent_load)
    root = run_checked(vm, lambda at, n: data[at:at + n], source)
    return ReadResult(root, "torch-zip", vm.protocol, list(archive.storages.values()), vm.globals_used)


# ----------------------------------------------------------------------------- legacy and pickle

def _read_pickle_or_legacy(inp: Input) -> ReadResult:
    first = FramedVM(inp.buf, source=inp.name)
    try:
        value = run_checked(first, inp.read, inp.name)
    except MalformedCheckpoint as exc:
        if inp.read(0, 1) == b"\x80":  # starts with PROTO: a pickle, but a broken one
            raise
        raise NotACheckpoint(f"{inp.name} is not a checkpoint (neither a torch zip nor a pickle): {exc}") from None
    if type(value) is int and value == LEGACY_MAGIC:
        try:
            return _read_legacy(inp, first.pos)
        except UnsafeCheckpoint as exc:
            exc.format = "torch-legacy"
            raise
    if first.pos != inp.size:
        _scan_trailing_pickles(inp, first.pos)
        raise MalformedCheckpoint(f"{inp.name}: {inp.size - first.pos} bytes of trailing data after the pickle "
                                  f"ends at byte {first.pos}")
    return ReadResult(value, "pickle", first.protocol, [], first.globals_used)


MAX_TRAILING_PICKLES = LIMITS.trailing_pickles


def _scan_trailing_pickles(inp: Input, pos: int) -> None:
    """Pickles concatenated after the first one are what a loader calling pickle.load in a loop would run:
    interpret them (inertly, like the first) and raise UnsafeCheckpoint if one uses a gadget."""
    for _ in range(MAX_TRAILING_PICKLES):
        if pos >= inp.size:
            return
        vm = PickleVM(inp.buf, source=f"{inp.name} (pickle after byte {pos})", start=pos)
        try:
            vm.run()
        except UnsafeCheckpoint as exc:
            exc.format = "pickle"
            raise
        except MalformedCheckpoint:
            return
        if vm.pos <= pos:
            return
        pos = vm.pos


def _read_legacy(inp: Input, pos: int) -> ReadResult:
    def small_pickle(what: str) -> tuple[Any, int]:
        vm = FramedVM(inp.buf, source=f"{inp.name} ({what})", start=pos)
        return run_checked(vm, inp.read, vm.source), vm.pos

    version, pos = small_pickle("protocol version")
    if version != LEGACY_PROTOCOL:
        raise MalformedCheckpoint(f"{inp.name}: legacy torch file with protocol version {version!r:.20}, expected 1001")
    sys_info, pos = small_pickle("system info")
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise UnsupportedValue(f"{inp.name} was saved on a big-endian machine; not supported")

    storages: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 4 and pid[0] in ("module", b"module"):
            return pid[1]  # the module's class, as a GlobalRef; its saved source is ignored
        if type(pid) is not tuple or len(pid) != 6 or pid[0] not in ("storage", b"storage"):
            raise MalformedCheckpoint(f"{inp.name}: unknown persistent id {pid!r:.80}")
        _, storage_type, key, location, numel, view = pid
        if type(key) is not str:
            raise MalformedCheckpoint(f"{inp.name}: bad storage key {key!r:.40}")
        dtype = _storage_dtype(storage_type, inp.name)
        root = storages.get(key)
        if root is None:
            root = storages[key] = StorageRef(key, dtype, _numel(numel) * dtype.itemsize, _location(location))
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise MalformedCheckpoint(f"{inp.name}: bad storage view {view!r:.60}")
        view_key, offset, size = view
        if (_numel(offset) + _numel(size)) * dtype.itemsize > root.nbytes:
            raise MalformedCheckpoint(f"{inp.name}: storage view {view_key!r:.20} reaches outside storage {key!r}")
        return StorageRef(str(view_key), dtype, size * dtype.itemsize, root.location, base=root, base_offset=offset)

    vm = FramedVM(inp.buf, source=f"{inp.name} (main pickle)", start=pos, persistent_load=persistent_load)
    root_value = run_checked(vm, inp.read, vm.source)
    keys, pos = small_pickle_at(inp, vm.pos)
    if type(keys) is not list or any(type(k) is not str for k in keys) or set(keys) != set(storages):
        raise MalformedCheckpoint(f"{inp.name}: legacy storage key list does not match the storages the pickle uses")
    for key in keys:
        storage = storages[key]
        if pos + 8 > inp.size:
            raise MalformedCheckpoint(f"{inp.name}: truncated before storage {key!r}")
        count = int.from_bytes(inp.read(pos, 8), "little", signed=True)
        if count < 0 or count * storage.dtype.itemsize != storage.nbytes:
            raise MalformedCheckpoint(f"{inp.name}: storage {key!r} record says {count} elements, the pickle "
                                      f"says {storage.nbytes // storage.dtype.itemsize}")
        pos += 8
        if pos + storage.nbytes > inp.size:
            raise MalformedCheckpoint(f"{inp.name}: truncated inside storage {key!r} (needs {storage.nbytes} bytes "
                                      f"at byte {pos}, file has {inp.size})")
        storage.buffer, storage.offset = inp.buf, pos
        pos += storage.nbytes
    if pos != inp.size:
        raise MalformedCheckpoint(f"{inp.name}: {inp.size - pos} bytes of trailing data after the last storage")
    return ReadResult(root_value, "torch-legacy", vm.protocol, list(storages.values()), vm.globals_used)


def small_pickle_at(inp: Input, pos: int) -> tuple[Any, int]:
    vm = FramedVM(inp.buf, source=f"{inp.name} (storage keys)", start=pos)
    return run_checked(vm, inp.read, vm.source), vm.pos
