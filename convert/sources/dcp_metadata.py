"""The `.metadata` file of a torch.distributed.checkpoint (DCP) folder, read as data.

`.metadata` is a pickle of a few dataclasses (`Metadata`, `TensorStorageMetadata`, ...). It is run
through our own pickle VM, which turns those classes into inert `ObjectRecord`s (nothing imported);
this module then interprets the records field by field, checking the type of every value: the file
is hostile until proven otherwise. The names in `DCP_DATA_CLASSES` are exempted from the gadget
check's `torch.distributed` prefix rule for this one stream; anything else it names is judged as usual.

torch reads more than `.metadata`: `dcp.load` unpickles it with `pickle.load`, and if that raises (or
gives a falsy value) it falls back to the rank-local `__<rank>.metadata` (FileSystemReader.read_metadata
with `rank=`). Every such file in the folder is read and gadget-checked too, and a folder whose
rank-local metadata is not byte-for-byte `.metadata` is refused as ambiguous: which one a loader
reads would depend on whether it fails to unpickle `.metadata`, a question our reader cannot settle.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError, MalformedCheckpoint, UnsafeCheckpoint, UnsupportedValue
from ..model.records import GlobalRef, ObjectRecord
from ..model.torch_types import QUANTIZED_DTYPES, DType, TorchSize, dtype_name
from ..primitives.hashing import sha256_fd
from ..primitives.source import Identity, SourceChanged
from ..read.containers import Input
from ..read.vm import Finding, PickleVM

METADATA_NAME = ".metadata"
# The rank-local metadata torch falls back to: f"__{rank}.metadata" for an int rank (no sign, no leading zero).
RANK_METADATA = re.compile(r"__(0|[1-9][0-9]*)\.metadata")
_MD = "torch.distributed.checkpoint.metadata."
METADATA = _MD + "Metadata"
TENSOR_STORAGE = _MD + "TensorStorageMetadata"
TENSOR_PROPERTIES = _MD + "TensorProperties"
CHUNK = _MD + "ChunkStorageMetadata"
BYTES_STORAGE = _MD + "BytesStorageMetadata"
METADATA_INDEX = _MD + "MetadataIndex"
STORAGE_META = _MD + "StorageMeta"
MEM_FORMAT = _MD + "_MEM_FORMAT_ENCODING"
STORAGE_INFO = "torch.distributed.checkpoint.filesystem._StorageInfo"


def is_dcp_folder(path: Path) -> bool:
    """A folder with a `.metadata` file: what `torch.distributed.checkpoint.save` writes."""
    return path.is_dir() and (path / METADATA_NAME).is_file()


def dcp_files(folder: Path) -> list[Path]:
    """The files of a DCP folder that make the checkpoint: `.metadata` and the `*.distcp` files, sorted."""
    return [folder / METADATA_NAME, *sorted(p for p in folder.glob("*.distcp") if p.is_file() and not p.is_symlink())]


# The plain dataclasses (and one enum) DCP pickles into `.metadata`: data, never code.
DCP_DATA_CLASSES: frozenset[str] = frozenset({
    METADATA, TENSOR_STORAGE, TENSOR_PROPERTIES, CHUNK, BYTES_STORAGE, METADATA_INDEX, STORAGE_META, MEM_FORMAT,
    STORAGE_INFO,
})
# The metadata classes whose every field has a default: the only ones pickle can call with no arguments.
_CALLABLE_WITHOUT_ARGUMENTS = frozenset({TENSOR_PROPERTIES, BYTES_STORAGE, STORAGE_META})
MAX_METADATA_BYTES = 1 << 32
MAX_PATH_PARTS = 64
_MEMORY_FORMATS = {0: "contiguous_format", 1: "channels_last", 2: "channels_last_3d", 3: "preserve_format"}


@dataclass(frozen=True)
class ChunkMeta:
    """One saved box of a tensor: where it starts in the whole tensor and how large it is."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class TensorMeta:
    dtype: DType
    shape: tuple[int, ...]
    chunks: tuple[ChunkMeta, ...]


@dataclass(frozen=True)
class BytesMeta:
    """A non-tensor value, saved as its own small `torch.save` archive."""


@dataclass(frozen=True)
class StorageInfo:
    """Where a saved item's bytes are: `relative_path` (a file of the folder), byte offset and length."""

    relative_path: str
    offset: int
    length: int


@dataclass
class DcpMetadata:
    """`.metadata`, interpreted: items in save order, their tree paths and where their bytes are."""

    items: dict[str, TensorMeta | BytesMeta]  # flattened key (fqn) → what it is, in file order
    paths: dict[str, tuple]  # fqn → path in the nested state dict (str keys, int list indices)
    storage: dict[tuple[str, tuple[int, ...] | None], StorageInfo]  # (fqn, chunk offsets or None) → bytes
    protocol: int
    globals_used: dict[str, int]
    identities: dict[Path, Identity] = field(default_factory=dict)  # every metadata file read, as when opened

    def check_unchanged(self) -> None:
        """Raise SourceChanged if a metadata file read is not the one (or not as it was) when opened."""
        for path, identity in self.identities.items():
            try:
                now = Identity.of(os.stat(path))
            except OSError:
                now = None
            if now != identity:
                raise SourceChanged(f"{path} changed while it was being read")


def _bad(where: str, message: str) -> MalformedCheckpoint:
    return MalformedCheckpoint(f"{where}: {message}")


def _fields(value: Any, qualname: str, where: str, allowed: set[str]) -> dict[str, Any]:
    """The attributes a dataclass record was pickled with (dict state, or (dict, slots) state)."""
    if not isinstance(value, ObjectRecord) or value.qualname != qualname:
        got = value.qualname if isinstance(value, ObjectRecord) else type(value).__name__
        raise _bad(where, f"expected a {qualname.rsplit('.', 1)[1]}, found {got}")
    if value.args not in ((),) or value.dictitems or value.listitems or value.via not in ("newobj", "reduce"):
        raise _bad(where, f"{qualname.rsplit('.', 1)[1]} is not pickled as a plain dataclass")
    if value.via == "reduce" and qualname not in _CALLABLE_WITHOUT_ARGUMENTS:
        # REDUCE calls the class: pickle.load fails on a dataclass with required fields (and dcp.load then
        # falls back to another file), so reading it as data would not be reading what torch reads
        raise _bad(where, f"{qualname.rsplit('.', 1)[1]} is called without its required fields; pickle.load fails on it")
    state = value.state
    if type(state) is tuple and len(state) == 2 and all(s is None or type(s) is dict for s in state):
        state = {**(state[0] or {}), **(state[1] or {})}
    if state is None:
        state = {}
    if type(state) is not dict or any(type(k) is not str for k in state):
        raise _bad(where, f"{qualname.rsplit('.', 1)[1]} state must be a dict of fields")
    unknown = sorted(set(state) - allowed)
    if unknown:
        raise UnsupportedValue(f"{where}: {qualname.rsplit('.', 1)[1]} has fields this converter does not know "
                               f"({', '.join(unknown)[:80]}); a newer DCP format?")
    return state


def _int(value: Any, where: str, hi: int = 1 << 62) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise _bad(where, f"expected an int in [0, {hi}], got {value!r:.40}")
    return value


def _size(value: Any, where: str) -> tuple[int, ...]:
    if type(value) is not TorchSize:
        raise _bad(where, f"expected a torch.Size, got {type(value).__name__}")
    return tuple(value)  # make_size already checked every entry


def _properties(value: Any, where: str) -> DType:
    if isinstance(value, ObjectRecord) and type(value.state) is tuple and len(value.state) == 5:
        # torch >= 2.1 pickles TensorProperties through __getstate__ as a 5-tuple
        record = ObjectRecord(value.qualname, value.args, None, value.dictitems, value.listitems, value.via)
        _fields(record, TENSOR_PROPERTIES, where, set())
        dtype, layout, requires_grad, memory_format, pin_memory = value.state
    else:
        state = _fields(value, TENSOR_PROPERTIES, where,
                        {"dtype", "layout", "requires_grad", "memory_format", "pin_memory"})
        dtype, layout = state.get("dtype"), state.get("layout", GlobalRef("torch", "strided"))
        requires_grad, pin_memory = state.get("requires_grad", False), state.get("pin_memory", False)
        memory_format = state.get("memory_format", GlobalRef("torch", "contiguous_format"))
    if not isinstance(dtype, DType):
        raise _bad(where, f"dtype must be a torch dtype, got {dtype!r:.40}")
    if dtype in QUANTIZED_DTYPES:
        raise UnsupportedValue(f"{where} is {dtype_name(dtype)}: quantized tensors have no lossless safetensors encoding")
    strided = (isinstance(layout, GlobalRef) and layout.qualname == "torch.strided") or (
        isinstance(layout, ObjectRecord) and layout.qualname == "torch.serialization._get_layout"
        and layout.args == ("torch.strided",) and layout.state is None)
    if not strided:
        raise UnsupportedValue(f"{where}: only strided (dense) tensors are supported, layout is {layout!r:.60}")
    if type(requires_grad) is not bool or type(pin_memory) is not bool:
        raise _bad(where, "requires_grad and pin_memory must be bools")
    known_format = (isinstance(memory_format, GlobalRef) and memory_format.module == "torch"
                    and memory_format.name in _MEMORY_FORMATS.values()) or (
        isinstance(memory_format, ObjectRecord) and memory_format.qualname == MEM_FORMAT and memory_format.state is None
        and len(memory_format.args) == 1 and memory_format.args[0] in _MEMORY_FORMATS
        and type(memory_format.args[0]) is int)
    if not known_format:
        raise _bad(where, f"unknown memory format {memory_format!r:.60}")
    return dtype


def _tensor_meta(value: Any, where: str) -> TensorMeta:
    state = _fields(value, TENSOR_STORAGE, where, {"properties", "size", "chunks"})
    dtype = _properties(state.get("properties"), f"{where}.properties")
    shape = _size(state.get("size"), f"{where}.size")
    chunks = state.get("chunks")
    if type(chunks) is not list:
        raise _bad(where, "chunks must be a list")
    out = []
    for i, chunk in enumerate(chunks):
        fields = _fields(chunk, CHUNK, f"{where}.chunks[{i}]", {"offsets", "sizes"})
        offsets = _size(fields.get("offsets"), f"{where}.chunks[{i}].offsets")
        sizes = _size(fields.get("sizes"), f"{where}.chunks[{i}].sizes")
        out.append(ChunkMeta(offsets, sizes))
    return TensorMeta(dtype, shape, tuple(out))


def _path(value: Any, where: str) -> tuple:
    if type(value) is not tuple or not 1 <= len(value) <= MAX_PATH_PARTS:
        raise _bad(where, f"a planner path must be a tuple of 1..{MAX_PATH_PARTS} keys")
    if type(value[0]) is not str or any(type(p) not in (str, int) or (type(p) is int and p < 0) for p in value):
        raise _bad(where, "a planner path holds str keys and non-negative int list indices, starting with a str")
    return value


def _storage(value: Any, where: str) -> dict[tuple[str, tuple[int, ...] | None], StorageInfo]:
    if type(value) is not dict:
        raise _bad(where, "storage_data must be a dict")
    out: dict[tuple[str, tuple[int, ...] | None], StorageInfo] = {}
    for index, info in value.items():
        key_fields = _fields(index, METADATA_INDEX, f"{where} key", {"fqn", "offset", "index"})
        fqn, offset = key_fields.get("fqn"), key_fields.get("offset")
        if type(fqn) is not str:
            raise _bad(where, "MetadataIndex.fqn must be a str")
        if key_fields.get("index") is not None:
            _int(key_fields["index"], f"{where}[{fqn!r}].index")
        key = (fqn, None if offset is None else _size(offset, f"{where}[{fqn!r}].offset"))
        info_fields = _fields(info, STORAGE_INFO, f"{where}[{fqn!r}]",
                              {"relative_path", "offset", "length", "transform_descriptors"})
        if info_fields.get("transform_descriptors") not in (None, [], ()):
            raise UnsupportedValue(f"{where}[{fqn!r}]: saved with stream transforms "
                                   f"({info_fields['transform_descriptors']!r:.60}), which are not supported")
        rel = info_fields.get("relative_path")
        if type(rel) is not str or rel in ("", ".", "..") or "/" in rel or "\\" in rel or "\0" in rel or rel.startswith("."):
            raise _bad(f"{where}[{fqn!r}]", f"relative_path {rel!r:.60} is not a plain file name of the folder")
        storage = StorageInfo(rel, _int(info_fields.get("offset"), f"{where}[{fqn!r}].offset"),
                              _int(info_fields.get("length"), f"{where}[{fqn!r}].length"))
        if key in out:
            raise _bad(where, f"{fqn!r} at offsets {key[1]} has two storage records")
        out[key] = storage
    return out


def rank_metadata_files(folder: Path) -> list[Path]:
    """The rank-local `__<rank>.metadata` files of `folder`, sorted (torch's fallback when `.metadata` fails)."""
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise ConvertError(f"{folder}: cannot list ({exc.strerror or exc})") from None
    return sorted(folder / name for name in names if RANK_METADATA.fullmatch(name))


def _read_pickle(path: Path, identities: dict[Path, Identity], digest: bool = True) -> tuple[Any, PickleVM, str]:
    """Run one metadata pickle through the VM: (root, the VM, the file's sha256 or "" without `digest`).
    Its identity goes into `identities`."""
    with Input(path) as inp:
        identities[path] = inp.identity
        if inp.size > MAX_METADATA_BYTES:
            raise MalformedCheckpoint(f"{path}: {inp.size} bytes is too large for DCP metadata")
        vm = PickleVM(inp.buf, source=str(path), data_classes=DCP_DATA_CLASSES)
        root = vm.run()
        if vm.pos != inp.size:
            raise MalformedCheckpoint(f"{path}: {inp.size - vm.pos} bytes of trailing data after the pickle")
        return root, vm, sha256_fd(inp.fileno(), inp.size) if digest else ""


def read_metadata(folder: Path) -> DcpMetadata:
    """Read and check `folder/.metadata`.

    Args:
        folder: a DCP checkpoint folder.
    Returns:
        The interpreted metadata. Raises UnsafeCheckpoint if the pickle names a code-execution
        gadget, MalformedCheckpoint/UnsupportedValue for anything that is not DCP metadata.
    """
    path = folder / METADATA_NAME
    identities: dict[Path, Identity] = {}
    unsafe: list[UnsafeCheckpoint] = []
    raw: dict[Path, str] = {}
    for rank_path in rank_metadata_files(folder):  # what torch reads when `.metadata` fails: gadget-checked too
        try:
            _, _, raw[rank_path] = _read_pickle(rank_path, identities)
        except UnsafeCheckpoint as exc:
            unsafe.append(exc)
        except ConvertError:
            raw[rank_path] = ""  # not metadata we can read: cannot be the same as `.metadata`
    try:
        root, vm, data = _read_pickle(path, identities, digest=bool(raw))
    except UnsafeCheckpoint as exc:
        unsafe.insert(0, exc)
    except ConvertError:
        if not unsafe:
            raise
    if unsafe:
        first = unsafe[0]
        first.globals_used = {k: v for exc in unsafe for k, v in getattr(exc, "globals_used", {}).items()}
        raise first
    differing = sorted(p.name for p, b in raw.items() if b != data)
    if differing:
        finding = Finding(f"rank-local metadata {differing[0]} that differs from .metadata",
                          f"{folder}: dcp.load reads it when .metadata fails to unpickle")
        exc = UnsafeCheckpoint(f"{folder} holds {', '.join(differing)[:120]} besides a different .metadata: "
                               f"torch.distributed.checkpoint.load reads it whenever .metadata fails to unpickle, "
                               f"so the two readers could disagree; remove the rank-local metadata", [finding])
        exc.globals_used = dict(vm.globals_used)
        raise exc
    where = str(path)
    state = _fields(root, METADATA, where, {"state_dict_metadata", "planner_data", "storage_data", "storage_meta",
                                            "version"})
    items_raw = state.get("state_dict_metadata")
    if type(items_raw) is not dict or not all(type(k) is str for k in items_raw):
        raise _bad(where, "state_dict_metadata must be a dict of str keys")
    items: dict[str, TensorMeta | BytesMeta] = {}
    for fqn, value in items_raw.items():
        if isinstance(value, ObjectRecord) and value.qualname == BYTES_STORAGE:
            _fields(value, BYTES_STORAGE, f"{where}[{fqn!r}]", set())
            items[fqn] = BytesMeta()
        else:
            items[fqn] = _tensor_meta(value, f"{where}[{fqn!r}]")
    planner = state.get("planner_data")
    paths: dict[str, tuple] = {}
    if planner is not None:
        if type(planner) is not dict:
            raise _bad(where, "planner_data must be a dict")
        paths = {fqn: _path(planner[fqn], f"{where} planner_data[{fqn!r}]") for fqn in items if fqn in planner}
    version = state.get("version")
    if version is not None and type(version) is not str:
        raise _bad(where, "version must be a str")
    if state.get("storage_meta") is not None:  # provenance (checkpoint id, save id): not needed, only checked
        _fields(state["storage_meta"], STORAGE_META, f"{where}.storage_meta",
                {"checkpoint_id", "save_id", "load_id", "modules"})
    return DcpMetadata(items, paths, _storage(state.get("storage_data"), f"{where}.storage_data"), vm.protocol,
                       dict(vm.globals_used), identities)
