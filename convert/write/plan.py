"""Plan a conversion: the checkpoint tree → safetensors entries per file + the JSON sidecar.

One `.safetensors` file per top-level state dict (its own keys, so `load_file` hands back the
plain state dict), every other tensor's bytes in `tensors.safetensors`, and the skeleton as typed
JSON. A plain tensor (its own whole storage, contiguous, default flags, native dtype) is just its
entry, listed in the sidecar's `entries`; every other tensor is a row describing a view (dtype,
shape, stride, offset) of a storage, so tied and aliased tensors share memory again when loaded.
Each storage byte is written once: a storage is one entry holding exactly its bytes, or is rebuilt
from its tensors' contiguous copies ("pieces") plus the bytes none of them covers ("rest").
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedCheckpoint
from ..model.dtypes import NATIVE, Encoding, encoding_for
from ..model.records import ModuleRecord, NdArrayRef, StorageRef, TensorRef, Unsupported
from ..model.strides import contiguous_strides
from ..model.tensor_bytes import (
    contiguous_source,
    covered_bytes,
    covers_storage,
    dense_span,
    ndarray_bytes,
    ndarray_dtype,
    storage_source,
    tensor_bytes,
    uncovered_bytes,
)
from ..model.torch_types import CANONICAL, dtype_name
from ..model.views import non_overlapping
from ..sidecar.codec import MAX_NODES, EncodeHooks, Encoder, Field, Items
from ..sidecar.names import FORMAT_NAME
from ..sidecar.schema import BARE_FILE, EXTRA_FILE, FORMAT_VERSION
from .shards import assign_shards, index_bytes

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(slots=True)  # one per tensor: 300k of them in a mixture-of-experts checkpoint
class Entry:
    """One tensor of one safetensors file; `data()` yields its bytes when the file is written."""

    key: str
    code: str
    shape: list[int]
    nbytes: int
    data: Callable[[], Any]
    # (buffer, byte offset) when the bytes are buffer[offset:offset + nbytes] of the input as they are:
    # the writer can then copy them file-to-file in the kernel (see safetensors_io.KernelCopySource).
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


class Planner(EncodeHooks):
    def __init__(self, max_shard_size: int | None = None) -> None:
        self.max_shard_size = max_shard_size
        self.encoder = Encoder(self)
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
        self._keep: list[Any] = []
        # plain tensors and arrays (no row: the safetensors header says dtype and shape): file → {id: key}
        self.entries: dict[str, dict[str, str]] = {}
        self.default_device = "cpu"

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
    def tensor_ref(self, ref: TensorRef, path: list) -> Any:
        return self._tensor(ref, path, None, None)  # a generator: the encoder writes the attributes' values

    def array_ref(self, ref: NdArrayRef, path: list) -> str:
        return self.array(ref, path)["$ndarray"]

    def module_ref(self, ref: ModuleRecord, path: list, depth: int) -> dict:
        return self._module_entry(ref, path, None, depth)

    def tensor(self, ref: TensorRef, path: list, file: str | None, key: str | None) -> dict:
        """A tensor's row (and entry, with `file` and `key`); `{"$tensor": id}`."""
        return {"$tensor": self.encoder.run(self._tensor(ref, path, file, key))}

    def _tensor(self, ref: TensorRef, path: list, file: str | None, key: str | None) -> Items:
        """The tensor's id; yields its attributes' values to the encoder (a chain of tensors whose attributes
        hold tensors costs no Python frames)."""
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
                attrs = info["attrs"] = {}
                for k, v in ref.attrs.items():
                    attrs[k] = yield v, [*path, k], 0
            if key is not None and file is not None:
                info["file"] = file
                info["key"] = self._add_entry(file, key, enc, list(ref.shape), ref.numel * ref.dtype.itemsize,
                                              functools.partial(tensor_bytes, ref), contiguous_source(ref))
            self.tensors[tid] = info
            self.tensor_refs[tid] = ref
        elif key is not None and file is not None and self.tensors[tid].get("key") != key:
            # The same tensor object under a second key of a state dict (`sd["b"] = sd["a"]`): the file
            # still needs the key for `load_file`; the loader keeps using the one tensor object.
            info = self.tensors[tid]
            extra = self._add_entry(file, key, encoding_for(ref.dtype, key), list(ref.shape),
                                    ref.numel * ref.dtype.itemsize, lambda r=ref: tensor_bytes(r), contiguous_source(ref))
            info.setdefault("also_keys", []).append(extra)
        return tid

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
            if enc.encoding is None and not ref.fortran and ref.dtype[0] != ">":
                # C order, little-endian, a dtype safetensors has: the header says it all
                self.entries.setdefault(EXTRA_FILE, {})[aid] = key
            else:
                self.arrays[aid] = {"dtype": ref.dtype, "shape": list(ref.shape), "fortran": ref.fortran,
                                    "file": EXTRA_FILE, "key": key}
        return {"$ndarray": aid}

    def state_dict(self, value: Any, path: list, file: str, shards: dict[str, str] | None = None) -> Any:
        """A top-level state dict: each tensor becomes an entry of `file` (or of its shard) under its own key."""
        return self.encoder.node(value, path, 0, payload=lambda: self._state_dict_pairs(value, path, file, shards))

    def _state_dict_pairs(self, value: Any, path: list, file: str, shards: dict[str, str] | None) -> list:
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
        return items

    def value(self, v: Any, path: list, depth: int) -> Any:
        """`v` as typed JSON (convert/sidecar/codec.py); tensors, arrays and modules come back to this planner."""
        return self.encoder.value(v, path, depth)

    def module(self, m: ModuleRecord, path: list, file: str | None, depth: int) -> Any:
        """A module (given back as its state_dict); with `file`, its state dict gets that file."""
        return self.encoder.node(m, path, depth, payload=lambda: self._module_entry(m, path, file, depth))

    def _module_entry(self, m: ModuleRecord, path: list, file: str | None, depth: int) -> dict:
        index = len(self.modules)
        tree_encoder = Encoder(max_nodes=MAX_NODES - self.encoder.nodes)  # a separate graph: never decoded with root
        tree_encoder.count(m.tree)
        self.modules.append({"path": [str(p) for p in path], "class": m.qualname,
                             "tree": tree_encoder.value(m.tree, [*path, Field("<module>")], depth + 1)})
        self.encoder.nodes += tree_encoder.nodes
        sd = self.state_dict(m.state_dict, path, file) if file is not None else self.value(m.state_dict, path, depth + 1)
        return {"index": index, "state_dict": sd}

    # --------------------------------------------------------------- storages
    def finish_storages(self) -> dict:
        """Decide which tensors are plain (no row) and give every other storage its bytes, each written once.

        A storage backs exactly one entry when a tensor with an entry covers it, else it is rebuilt
        from the contiguous copies of its dense tensors ("pieces", scattered back through their
        views on load) plus raw entries for the bytes no piece covers ("gaps").
        """
        by_storage: dict[str, list[str]] = collections.defaultdict(list)
        for tid, info in self.tensors.items():
            by_storage[info["storage"]].append(tid)
        locations = collections.Counter(storage.location for _, storage in self.storages.values())
        self.default_device = locations.most_common(1)[0][0] if locations else "cpu"
        out: dict[str, dict] = {}
        for sid, storage in self.storages.values():
            tids = by_storage[sid]
            if len(tids) == 1 and self._plain(tids[0], storage):
                continue
            out[sid] = self._storage_row(sid, storage, tids)
        return out

    def _plain(self, tid: str, storage: StorageRef) -> bool:
        """Make `tid` a plain tensor (its own whole storage, default flags, native dtype) if it is one."""
        ref, info = self.tensor_refs[tid], self.tensors[tid]
        if (ref.requires_grad or ref.is_parameter or ref.conj or ref.neg or ref.attrs or "also_keys" in info
                or ref.offset != 0 or ref.dtype not in NATIVE or storage.dtype != ref.dtype
                or storage.location != self.default_device
                or tuple(ref.stride) != contiguous_strides(ref.shape)
                or ref.numel * ref.dtype.itemsize != storage.nbytes):
            return False
        if "key" in info:
            file, key = info["file"], info["key"]
        else:
            file, key = EXTRA_FILE, self._add_entry(EXTRA_FILE, self.tensor_paths[tid], encoding_for(ref.dtype, tid),
                                                    list(ref.shape), storage.nbytes, functools.partial(tensor_bytes, ref),
                                                    contiguous_source(ref))
        self.entries.setdefault(file, {})[tid] = key
        del self.tensors[tid]
        return True

    def _storage_row(self, sid: str, storage: StorageRef, tids: list[str]) -> dict:
        info: dict[str, Any] = {"dtype": dtype_name(storage.dtype), "nbytes": storage.nbytes,
                                "device": storage.location}
        with_entry = next((t for t in tids if "key" in self.tensors[t] and covers_storage(self.tensor_refs[t])), None)
        if with_entry is not None:
            info["file"], info["key"] = self.tensors[with_entry]["file"], self.tensors[with_entry]["key"]
            return info
        pieces, rest = self._pieces(storage, tids)
        if pieces:
            info["pieces"] = pieces
            if rest:
                refs = [self.tensor_refs[t] for t in pieces]
                info["rest"] = [EXTRA_FILE, self._add_entry(
                    EXTRA_FILE, f"__storage__/{sid}/rest", encoding_for(CANONICAL["uint8"], sid), [rest], rest,
                    lambda s=storage, r=refs: uncovered_bytes(s, r))]
            return info
        full = next((t for t in tids if covers_storage(self.tensor_refs[t])), None)
        info["file"] = EXTRA_FILE
        if full is not None:
            ref = self.tensor_refs[full]
            info["key"] = self._add_entry(EXTRA_FILE, self.tensor_paths[full], encoding_for(ref.dtype, f"tensor {full}"),
                                          list(ref.shape), storage.nbytes, lambda r=ref: tensor_bytes(r),
                                          contiguous_source(ref))
        else:
            numel = storage.nbytes // storage.dtype.itemsize
            info["key"] = self._add_entry(EXTRA_FILE, f"__storage__/{sid}", encoding_for(storage.dtype, f"storage {sid}"),
                                          [numel], storage.nbytes, lambda s=storage: s.data(), storage_source(storage))
        return info

    def _pieces(self, storage: StorageRef, tids: list[str]) -> tuple[list[str], int]:
        """Tensors with an entry that together rebuild the storage, and how many of its bytes none covers.

        Dense views (transposes, contiguous slices, members of a flat buffer) cover a byte range:
        among those that overlap, the first stands for the bytes. Other non-overlapping views (a
        strided slice) are pieces too. The uncovered bytes are written once more, as the "rest".
        """
        spans, strided = [], []
        for t in tids:
            ref = self.tensor_refs[t]
            if "key" not in self.tensors[t] or ref.numel == 0:
                continue
            span = dense_span(ref)
            if span is not None:
                spans.append((span[0], -span[1], t))
            elif non_overlapping(ref.shape, ref.stride):
                strided.append(t)
        spans.sort()
        pieces, covered, held = [], 0, 0
        for start, neg_end, t in spans:
            if start >= covered:
                pieces.append(t)
                covered, held = -neg_end, held + (-neg_end - start)
        if not strided:
            return pieces, storage.nbytes - held
        pieces += strided
        return pieces, storage.nbytes - covered_bytes(storage, [self.tensor_refs[t] for t in pieces])


def _root_pairs(planner: Planner, root: dict, taken: set[str]) -> list:
    """The root mapping's items: each state dict (or module) under a str key gets its own file."""
    items = []
    for k, v in root.items():
        key = planner.value(k, [Field("<key>")], 1)  # keys first: the decoder reads them first
        if type(k) is str and id(v) not in planner.encoder.ids and is_state_dict(v):
            enc = planner.state_dict(v, [k], _file_name(k, taken))
        elif (type(k) is str and id(v) not in planner.encoder.ids and type(v) is ModuleRecord
              and is_state_dict(v.state_dict)):
            enc = planner.module(v, [k], _file_name(k, taken), 1)
        else:
            enc = planner.value(v, [k], 1)
        items.append([key, enc])
    return items


def make_plan(root: Any, provenance: dict, *, max_shard_size: int | None = None,
              root_shards: dict[str, str] | None = None) -> Plan:
    """Build the plan for a read checkpoint tree.

    `max_shard_size` splits state dicts larger than that many bytes into shards;
    `root_shards` fixes the shard of each key of a root state dict (a Hugging Face sharded input).
    """
    planner = Planner(max_shard_size)
    planner.encoder.count(root)
    taken = {EXTRA_FILE.lower(), "checkpoint.safetensors"}

    try:
        if is_state_dict(root) or (type(root) is ModuleRecord and is_state_dict(root.state_dict)):
            taken.add(BARE_FILE)
            encoded = (planner.module(root, [], BARE_FILE, 0) if type(root) is ModuleRecord
                       else planner.state_dict(root, [], BARE_FILE, root_shards))
        elif type(root) in (dict, collections.OrderedDict):
            encoded = planner.encoder.node(root, [], 0, payload=lambda: _root_pairs(planner, root, taken))
        else:
            encoded = planner.value(root, [], 0)
    except RecursionError:  # each level costs a few Python frames; the depth caps may not be reached first
        raise MalformedCheckpoint("checkpoint nests too deeply") from None

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
    if planner.entries:
        planner.plan.sidecar["entries"] = planner.entries
    if planner.default_device != "cpu":
        planner.plan.sidecar["default_device"] = planner.default_device
    return planner.plan
