"""Plan a conversion: the checkpoint tree → safetensors entries per file + the JSON sidecar.

One `.safetensors` file per top-level state dict (its own keys, so `load_file` hands back the
plain state dict), every other tensor's bytes in `tensors.safetensors`, and the skeleton as typed
JSON. Tensors are described in the sidecar as views (dtype, shape, stride, offset) of storages;
each storage is backed by one entry that holds exactly its bytes, so tied and aliased tensors
share memory again when loaded.
"""

from __future__ import annotations

import base64
import collections
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import Encoding, encoding_for
from ..errors import MalformedCheckpoint, UnsupportedValue
from ..read.records import (
    GlobalRef,
    ModuleRecord,
    NdArrayRef,
    NpDType,
    NpScalar,
    ObjectRecord,
    StorageRef,
    TensorRef,
    Unsupported,
)
from ..read.torch_types import Device, DType, TorchSize, dtype_name
from ..schema import BARE_FILE, EXTRA_FILE, FORMAT_NAME, FORMAT_VERSION
from .shards import assign_shards, index_bytes
from .tensor_bytes import (
    contiguous_source,
    covers_storage,
    ndarray_bytes,
    ndarray_dtype,
    storage_source,
    tensor_bytes,
)

MAX_DEPTH = 400
MAX_NODES = 5_000_000  # shared containers are written out once per use: this bounds "billion laughs"
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Entry:
    """One tensor of one safetensors file; `data()` yields its bytes when the file is written."""

    key: str
    code: str
    shape: list[int]
    nbytes: int
    data: Callable[[], Any]
    # (buffer, byte offset) when the bytes are buffer[offset:offset + nbytes] of the input as they are:
    # the writer can then copy them file-to-file in the kernel (see safetensors_io.kernel_copy_from).
    source: tuple[Any, int] | None = None


@dataclass
class Plan:
    files: dict[str, list[Entry]] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)
    indexes: dict[str, bytes] = field(default_factory=dict)  # NAME.safetensors.index.json of sharded state dicts


def is_state_dict(value: Any) -> bool:
    """A non-empty dict of str → tensor, storable as one safetensors file with its own keys."""
    return (type(value) in (dict, collections.OrderedDict) and len(value) > 0
            and all(type(k) is str and k != "__metadata__" for k in value)
            and all(isinstance(v, (TensorRef, Unsupported)) for v in value.values()))


def _file_name(key: str, taken: set[str]) -> str:
    # no leading "-" (it looks like an option); 80 characters leave room for a -00001-of-0000N shard suffix
    stem = _NAME_OK.sub("_", key).lstrip(".-")[:80] or "state_dict"
    name, n = f"{stem}.safetensors", 1
    while name.lower() in taken:
        n += 1
        name = f"{stem}_{n}.safetensors"
    taken.add(name.lower())
    return name


class Planner:
    def __init__(self, max_shard_size: int | None = None) -> None:
        self.max_shard_size = max_shard_size
        self.plan = Plan()
        self.tensors: dict[str, dict] = {}
        self.arrays: dict[str, dict] = {}
        self.storages: dict[int, tuple[str, StorageRef]] = {}
        self.tensor_refs: dict[str, TensorRef] = {}
        self.tensor_ids: dict[tuple[int, str | None], str] = {}
        self.array_ids: dict[int, str] = {}
        self.tensor_paths: dict[str, str] = {}  # readable path: the entry key if it needs one in tensors.safetensors
        self.modules: list[dict] = []
        self.state_dict_files: list[dict] = []
        self.keys_used: dict[str, set[str]] = collections.defaultdict(set)
        self.nodes = 0
        self._keep: list[Any] = []

    # --------------------------------------------------------------- entries
    def _add_entry(self, file: str, key: str, enc: Encoding, shape: list[int], nbytes: int, data: Callable,
                   source: tuple[Any, int] | None = None) -> str:
        base, n = key, 1
        while key in self.keys_used[file] or key == "__metadata__":
            n += 1
            key = f"{base}#{n}"
        self.keys_used[file].add(key)
        entry = Entry(key, enc.code, enc.stored_shape(shape), nbytes, data, source)
        self.plan.files.setdefault(file, []).append(entry)
        return key

    def _storage_id(self, storage: StorageRef) -> str:
        found = self.storages.get(id(storage))
        if found is None:
            found = self.storages[id(storage)] = (f"s{len(self.storages)}", storage)
        return found[0]

    # --------------------------------------------------------------- values
    def tensor(self, ref: TensorRef, path: list, file: str | None, key: str | None) -> dict:
        memo_key = (id(ref), file if key is not None else None)
        tid = self.tensor_ids.get(memo_key)
        if tid is None:
            where = "/".join(map(str, path)) or "<root>"
            enc = encoding_for(ref.dtype, where)
            tid = self.tensor_ids[memo_key] = f"t{len(self.tensor_ids)}"
            self.tensor_paths[tid] = "/".join(map(str, path)) or "tensor"
            self._keep.append(ref)
            info: dict[str, Any] = {
                "dtype": dtype_name(ref.dtype), "shape": list(ref.shape), "stride": list(ref.stride),
                "offset": ref.offset, "storage": self._storage_id(ref.storage),
                "requires_grad": ref.requires_grad, "parameter": ref.is_parameter,
            }
            if ref.conj:
                info["conj"] = True
            if ref.neg:
                info["neg"] = True
            if ref.attrs:
                info["attrs"] = {k: self.value(v, [*path, k], 0) for k, v in ref.attrs.items()}
            if key is not None and file is not None:
                info["file"] = file
                info["key"] = self._add_entry(file, key, enc, list(ref.shape), ref.numel * ref.dtype.itemsize,
                                              lambda r=ref: tensor_bytes(r), contiguous_source(ref))
            self.tensors[tid] = info
            self.tensor_refs[tid] = ref
        elif key is not None and file is not None and self.tensors[tid].get("key") != key:
            # The same tensor object under a second key of a state dict (`sd["b"] = sd["a"]`): the file
            # still needs the key for `load_file`; the loader keeps using the one tensor object.
            info = self.tensors[tid]
            extra = self._add_entry(file, key, encoding_for(ref.dtype, key), list(ref.shape),
                                    ref.numel * ref.dtype.itemsize, lambda r=ref: tensor_bytes(r), contiguous_source(ref))
            info.setdefault("also_keys", []).append(extra)
        return {"$tensor": tid}

    def array(self, ref: NdArrayRef, path: list) -> dict:
        aid = self.array_ids.get(id(ref))
        if aid is None:
            if ref.data is None:
                raise MalformedCheckpoint(f"numpy array at {'/'.join(map(str, path))} was never filled in")
            aid = self.array_ids[id(ref)] = f"a{len(self.array_ids)}"
            self._keep.append(ref)
            enc = encoding_for(ndarray_dtype(ref), "/".join(map(str, path)))
            key = self._add_entry(EXTRA_FILE, "/".join(map(str, path)) or "array", enc, list(ref.shape),
                                  len(ref.data), lambda r=ref: ndarray_bytes(r))
            self.arrays[aid] = {"dtype": ref.dtype, "shape": list(ref.shape), "fortran": ref.fortran,
                                "file": EXTRA_FILE, "key": key}
        return {"$ndarray": aid}

    def state_dict(self, value: Any, path: list, file: str, shards: dict[str, str] | None = None) -> dict:
        """A top-level state dict: each tensor becomes an entry of `file` (or of its shard) under its own key."""
        stem = file.removesuffix(".safetensors")
        if shards is None and self.max_shard_size is not None:
            shards = assign_shards(value, stem, self.max_shard_size)
        items = [[k, self.value(v, [*path, k], 1) if type(v) is Unsupported
                  else self.tensor(v, [*path, k], shards[k] if shards else file, k)]
                 for k, v in value.items()]
        record: dict[str, Any] = {"path": [str(p) for p in path], "file": file}
        if shards:
            weight_map = {}
            for item in items:
                info = self.tensors.get(item[1].get("$tensor", ""), {})
                for entry_key in [info["key"], *info.get("also_keys", [])] if "key" in info else []:
                    weight_map[entry_key] = info["file"]
            total = sum(e.nbytes for name in set(weight_map.values()) for e in self.plan.files.get(name, []))
            record["file"] = f"{file}.index.json"
            record["shards"] = sorted(set(weight_map.values()))
            self.plan.indexes[record["file"]] = index_bytes(weight_map, total)
        self.state_dict_files.append(record)
        return self._mapping(value, items, path, 0)

    def _mapping(self, value: Any, items: list, path: list, depth: int) -> dict:
        if type(value) is collections.OrderedDict:
            out: dict[str, Any] = {"$odict": items}
            attrs = getattr(value, "__dict__", {})
            if attrs:
                out["$attrs"] = {k: self.value(v, [*path, k], depth + 1) for k, v in attrs.items()}
            return out
        if all(type(k) is str and not k.startswith("$") for k, _ in items):
            return {k: v for k, v in items}
        return {"$dict": items}

    def value(self, v: Any, path: list, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise MalformedCheckpoint(f"checkpoint expands to more than {MAX_NODES} values (shared containers "
                                      "repeated too often); refusing")
        if depth > MAX_DEPTH:
            raise MalformedCheckpoint(f"checkpoint nests deeper than {MAX_DEPTH} levels")
        kind = type(v)
        if v is None or kind in (bool, str):
            return v
        if kind is int:
            return v if -(1 << 63) <= v < (1 << 63) else {"$int": hex(v)}
        if kind is float:
            return v if math.isfinite(v) else {"$float": struct.pack(">d", v).hex()}
        if kind in (dict, collections.OrderedDict):
            items = [[self.value(k, [*path, "<key>"], depth + 1), self.value(x, [*path, k], depth + 1)]
                     for k, x in v.items()]
            return self._mapping(v, items, path, depth)
        if kind is list:
            return [self.value(x, [*path, i], depth + 1) for i, x in enumerate(v)]
        if kind is tuple:
            return {"$tuple": [self.value(x, [*path, i], depth + 1) for i, x in enumerate(v)]}
        if kind in (set, frozenset):
            items = [self.value(x, [*path, i], depth + 1) for i, x in enumerate(v)]
            items.sort(key=repr)  # set order depends on hash seeds; sorted output is deterministic
            return {"$set" if kind is set else "$frozenset": items}
        if kind is complex:
            return {"$complex": [self.value(v.real, path, depth + 1), self.value(v.imag, path, depth + 1)]}
        if kind is bytes:
            return {"$bytes": base64.b64encode(v).decode("ascii")}
        if kind is bytearray:
            return {"$bytearray": base64.b64encode(bytes(v)).decode("ascii")}
        if kind is TensorRef:
            return self.tensor(v, path, None, None)
        if kind is NdArrayRef:
            return self.array(v, path)
        if kind is NpScalar:
            return {"$npscalar": {"dtype": v.dtype, "hex": v.data.hex()}}
        if kind is NpDType:
            return {"$npdtype": v.str}
        if kind is DType:
            return {"$dtype": dtype_name(v)}
        if kind is TorchSize:
            return {"$size": list(v)}
        if kind is Device:
            return {"$device": str(v)}
        if kind is GlobalRef:
            return {"$global": v.qualname}
        if kind is Unsupported:
            raise UnsupportedValue(f"{'/'.join(map(str, path)) or '<root>'} is {v.reason}")
        if kind is ModuleRecord:
            return self.module(v, path, None, depth)
        if kind is ObjectRecord:
            out: dict[str, Any] = {"class": v.qualname, "via": v.via,
                                   "args": self.value(tuple(v.args), [*path, "args"], depth + 1)}
            if v.state is not None:
                out["state"] = self.value(v.state, [*path, "state"], depth + 1)
            if v.dictitems:
                out["dictitems"] = [[self.value(k, path, depth + 1), self.value(x, [*path, k], depth + 1)]
                                    for k, x in v.dictitems]
            if v.listitems:
                out["listitems"] = [self.value(x, [*path, i], depth + 1) for i, x in enumerate(v.listitems)]
            return {"$object": out}
        raise UnsupportedValue(f"{'/'.join(map(str, path)) or '<root>'} holds a {kind.__name__}, which cannot be stored")

    def module(self, m: ModuleRecord, path: list, file: str | None, depth: int) -> dict:
        index = len(self.modules)
        self.modules.append({"path": [str(p) for p in path], "class": m.qualname,
                             "tree": self.value(m.tree, [*path, "<module>"], depth + 1)})
        sd = self.state_dict(m.state_dict, path, file) if file is not None else self.value(m.state_dict, path, depth + 1)
        return {"$module": {"index": index, "state_dict": sd}}

    # --------------------------------------------------------------- storages
    def finish_storages(self) -> dict:
        """Give every storage one backing entry that holds exactly its bytes."""
        by_storage: dict[str, list[str]] = collections.defaultdict(list)
        for tid, info in self.tensors.items():
            by_storage[info["storage"]].append(tid)
        out: dict[str, dict] = {}
        for sid, storage in self.storages.values():
            tids = by_storage[sid]
            full = [t for t in tids if covers_storage(self.tensor_refs[t])]
            with_entry = [t for t in full if "key" in self.tensors[t]]
            info = {"dtype": dtype_name(storage.dtype), "nbytes": storage.nbytes, "device": storage.location}
            if with_entry:
                t = self.tensors[with_entry[0]]
                info["file"], info["key"] = t["file"], t["key"]
            elif full:
                tid = full[0]
                ref = self.tensor_refs[tid]
                enc = encoding_for(ref.dtype, f"tensor {tid}")
                info["file"] = EXTRA_FILE
                info["key"] = self._add_entry(EXTRA_FILE, self.tensor_paths[tid], enc, list(ref.shape),
                                              storage.nbytes, lambda r=ref: tensor_bytes(r), contiguous_source(ref))
            else:
                enc = encoding_for(storage.dtype, f"storage {sid}")
                numel = storage.nbytes // storage.dtype.itemsize
                info["file"] = EXTRA_FILE
                info["key"] = self._add_entry(EXTRA_FILE, f"__storage__/{sid}", enc, [numel], storage.nbytes,
                                              lambda s=storage: s.data(), storage_source(storage))
            out[sid] = info
        return out


def make_plan(root: Any, provenance: dict, *, max_shard_size: int | None = None,
              root_shards: dict[str, str] | None = None) -> Plan:
    """Build the plan for a read checkpoint tree.

    `max_shard_size` splits state dicts larger than that many bytes into shards;
    `root_shards` fixes the shard of each key of a root state dict (a Hugging Face sharded input).
    """
    planner = Planner(max_shard_size)
    taken = {EXTRA_FILE.lower(), "checkpoint.safetensors"}

    if is_state_dict(root) or (type(root) is ModuleRecord and is_state_dict(root.state_dict)):
        taken.add(BARE_FILE)
        encoded = (planner.module(root, [], BARE_FILE, 0) if type(root) is ModuleRecord
                   else planner.state_dict(root, [], BARE_FILE, root_shards))
    elif type(root) in (dict, collections.OrderedDict):
        items = []
        for k, v in root.items():
            if type(k) is str and is_state_dict(v):
                enc = planner.state_dict(v, [k], _file_name(k, taken))
            elif type(k) is str and type(v) is ModuleRecord and is_state_dict(v.state_dict):
                enc = planner.module(v, [k], _file_name(k, taken), 1)
            else:
                enc = planner.value(v, [k], 1)
            items.append([planner.value(k, ["<key>"], 1), enc])
        encoded = planner._mapping(root, items, [], 0)
    else:
        encoded = planner.value(root, [], 0)

    storages = planner.finish_storages()
    planner.plan.sidecar = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "converter": provenance.pop("converter"),
        "source": provenance,
        "files": {name: {"tensors": len(entries), "bytes": sum(e.nbytes for e in entries)}
                  for name, entries in planner.plan.files.items()},
        "state_dicts": planner.state_dict_files,
        "modules": planner.modules,
        "storages": storages,
        "tensors": planner.tensors,
        "arrays": planner.arrays,
        "root": encoded,
    }
    return planner.plan
