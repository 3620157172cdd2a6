"""Live Python objects → the reader's record tree, exactly as `torch.save` followed by the safe reader gives it.

`save_checkpoint` writes through the same planner and writer as `convert`, so it needs the tree the
reader would produce from `torch.save(obj)`. This module walks the user's objects the way
`pickle.Pickler.save` (protocol 2, torch.save's default) does, and applies each step the way the
reader's VM (`read/vm.py`) applies the opcode the pickler would have written: the same allowlisted
reconstructors, the same inert `ObjectRecord`s for every other class, the same BUILD/APPEND/SETITEM
semantics. Nothing is serialised: tensors become `TensorRef`s over one `StorageRef` per untyped
storage whose buffer is the live storage's memory (CPU: a zero-copy view; other devices: a
`DeviceStorage` the writer stages in bounded chunks); numpy arrays are zero-copy views where possible.

Deliberate differences from pickle, all where `torch.save` would fail or `convert` would refuse:
an object whose class cannot be imported by its name, or a nested class (which protocol 2 can only
spell with `getattr`), is recorded under its `module.qualname`; nn.Modules are recorded from their
parameters, buffers, submodules and simple attributes only (their hooks are never walked).
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConvertError, MalformedCheckpoint, UnsafeCheckpoint, UnsupportedValue
from ..model.limits import LIMITS, check_structure
from ..model.numpy_types import NUMERIC_CODES
from ..model.records import GlobalRef, NdArrayRef, ObjectRecord, StorageRef
from ..model.torch_types import DTYPES_BY_NAME
from ..read import allowlist, gadgets, modules_as_state_dicts
from ..read.compat_names import resolve
from ..read.vm import Finding, append_items, build, set_items
from .base import Source
from .staging import DeviceStorage

PROTOCOL = 2  # torch.save's default pickle protocol: what __reduce_ex__ is asked for
_ATOMS = (type(None), bool, int, float, str, bytes, complex)
_GLOBAL_TYPES = (type, types.FunctionType)  # pickle's save_global; builtins reduce to their name
_SIMPLE = (bool, int, float, str, type(None))


def live_tree(obj: Any) -> Any:
    """The record tree `read_tree(torch.save(obj))` would give, built from `obj` without serialising it.

    Args:
        obj: what the user would have passed to torch.save.

    Returns:
        Plain containers and values with TensorRef/NdArrayRef/ObjectRecord/ModuleRecord/... leaves,
        whose tensor bytes are the live objects' memory (keep `obj` alive and unchanged until written).
    """
    raw = _LiveReader().value(obj, [], 0)  # modules as the records the reader's VM builds for them
    try:
        check_structure(raw)  # the reader's own rule: save_checkpoint refuses exactly what convert would
    except MalformedCheckpoint as exc:
        raise UnsupportedValue(f"<root>: {exc}") from None
    return modules_as_state_dicts(raw)


# The walk recurses; it stops a little past LIMITS.depth (a tensor's own reduce adds levels the reader does
# not keep), check_structure then applies the exact limit.
_WALK_DEPTH = LIMITS.depth + 8


def _where(path: list) -> str:
    return "/".join(map(str, path)) or "<root>"


class _LiveReader:
    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}
        self.keep: list[Any] = []  # originals of memo entries: their ids stay unique while we work
        self.active_tuples: set[int] = set()
        self.storages: dict[int, StorageRef] = {}  # by the untyped storage's C pointer, as torch.save keys them
        self.storage_dtypes: dict[int, torch.dtype] = {}  # data_ptr → dtype: torch.save's one-dtype rule
        self.module_records: dict[int, ObjectRecord] = {}

    def remember(self, obj: Any, result: Any) -> Any:
        self.memo[id(obj)] = result
        self.keep.append(obj)
        return result

    # ------------------------------------------------------------------ the walk (pickle's save())

    def value(self, obj: Any, path: list, depth: int) -> Any:
        if depth > _WALK_DEPTH:
            raise UnsupportedValue(f"{_where(path)}: nests deeper than {LIMITS.depth} levels")
        if isinstance(obj, (torch.UntypedStorage, torch.storage.TypedStorage)):  # torch.save's persistent_id
            return self.storage(obj, path)
        found = self.memo.get(id(obj), self)
        if found is not self:
            return found
        kind = type(obj)
        if kind in _ATOMS:
            return obj
        if kind is tuple:
            if id(obj) in self.active_tuples:
                raise UnsupportedValue(f"{_where(path)}: a tuple that contains itself cannot be stored")
            self.active_tuples.add(id(obj))
            out = tuple(self.value(v, [*path, i], depth + 1) for i, v in enumerate(obj))
            self.active_tuples.discard(id(obj))
            return self.remember(obj, self.memo.get(id(obj), out))
        if kind is list:
            items: list = self.remember(obj, [])
            items.extend(self.value(v, [*path, i], depth + 1) for i, v in enumerate(obj))
            return items
        if kind is dict:
            mapping: dict = self.remember(obj, {})
            for k, v in obj.items():
                mapping[self.value(k, [*path, "<key>"], depth + 1)] = self.value(v, [*path, k], depth + 1)
            return mapping
        if kind is bytearray:  # protocol 2: REDUCE builtins.bytearray; the reader makes a bytearray
            return self.remember(obj, bytearray(obj))
        if kind in (set, frozenset):  # protocol 2: REDUCE set([...])
            return self.remember(obj, kind(self.value(v, [*path, i], depth + 1) for i, v in enumerate(obj)))
        if isinstance(obj, torch.nn.Module):
            return self.remember(obj, self.module(obj, path, depth))
        if kind is np.ndarray:
            array = self.ndarray(obj)
            if array is not None:
                return self.remember(obj, array)
        if isinstance(obj, _GLOBAL_TYPES):
            return self.remember(obj, self.global_ref(obj, None, path))
        return self.reduce(obj, path, depth)

    def reduce(self, obj: Any, path: list, depth: int) -> Any:
        """pickle's save_reduce, each opcode applied as the reader's VM applies it."""
        try:
            reducer = copyreg.dispatch_table.get(type(obj))
            rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(PROTOCOL)
        except Exception as exc:
            raise UnsupportedValue(f"{_where(path)}: a {type(obj).__name__} cannot be saved "
                                   f"({type(exc).__name__}: {exc})") from None
        if isinstance(rv, str):  # "save me as a global of this name" (torch dtypes, enum-like singletons)
            return self.remember(obj, self.global_ref(obj, rv, path))
        if type(rv) is not tuple or not 2 <= len(rv) <= 6:
            raise UnsupportedValue(f"{_where(path)}: {type(obj).__name__}.__reduce_ex__ returned {type(rv).__name__}")
        func, args, state, listitems, dictitems, state_setter = (*rv, None, None, None, None)[:6]
        if type(args) is not tuple:
            raise UnsupportedValue(f"{_where(path)}: {type(obj).__name__}.__reduce_ex__ gave non-tuple arguments")
        name = getattr(func, "__name__", "")
        if name == "__newobj_ex__":
            raise UnsupportedValue(f"{_where(path)}: a {type(obj).__name__} needs keyword arguments to be rebuilt "
                                   "(__getnewargs_ex__), which torch.save's pickle protocol cannot express")
        try:
            if name == "__newobj__":
                cls = self.value(args[0], [*path, "<class>"], depth + 1)
                if not isinstance(cls, GlobalRef):
                    raise UnsupportedValue(f"{_where(path)}: __newobj__ of something that is not a class")
                made = allowlist.instantiate(cls, self.value(args[1:], [*path, "args"], depth + 1), "newobj")
            else:
                made = self.call(self.value(func, [*path, "<reduce>"], depth + 1),
                                 self.value(args, [*path, "args"], depth + 1), path)
            if id(obj) in self.memo:  # reached again through its own arguments: pickle keeps that one
                made = self.memo[id(obj)]
            else:
                self.remember(obj, made)
            if listitems is not None:
                append_items(made, [self.value(v, [*path, i], depth + 1) for i, v in enumerate(listitems)])
            if dictitems is not None:
                set_items(made, [(self.value(k, [*path, "<key>"], depth + 1), self.value(v, [*path, k], depth + 1))
                                 for k, v in dictitems])
            if state is not None:
                walked = self.value(state, [*path, "state"], depth + 1)
                if state_setter is None:
                    build(made, walked)
                else:  # REDUCE state_setter(obj, state), result popped: the reader keeps no state
                    self.call(self.value(state_setter, [*path, "<setter>"], depth + 1), (made, walked), path)
        except ConvertError as exc:
            if isinstance(exc, (UnsupportedValue, UnsafeCheckpoint)):
                raise
            raise UnsupportedValue(f"{_where(path)}: {exc}") from None
        return made

    def call(self, func: Any, args: tuple, path: list) -> Any:
        """REDUCE, as the VM's `_call`: allowlisted reconstructors run, anything else is recorded."""
        if not isinstance(func, GlobalRef):
            raise UnsafeCheckpoint(f"{_where(path)}: is rebuilt by calling a computed value, which convert refuses "
                                   "as a code-execution pattern; not saved",
                                   [Finding("a call of a computed callable", _where(path))])
        reconstructor = allowlist.RECONSTRUCTORS.get(func.qualname)
        return ObjectRecord(func.qualname, args=args) if reconstructor is None else reconstructor(*args)

    def global_ref(self, obj: Any, name: str | None, path: list) -> Any:
        """pickle's save_global at protocol 2 (Python 3 names mapped back as fix_imports does), then the VM's GLOBAL
        (which maps them forward again): the name convert records for the same object."""
        name = name or getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if not isinstance(name, str):
            raise UnsupportedValue(f"{_where(path)}: {type(obj).__name__} has no name to be saved by")
        module = pickle.whichmodule(obj, name)
        if (module, name) in _compat_pickle.REVERSE_NAME_MAPPING:
            module, name = _compat_pickle.REVERSE_NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.REVERSE_IMPORT_MAPPING:
            module = _compat_pickle.REVERSE_IMPORT_MAPPING[module]
        module, name = resolve(module, name, 2)  # and read back as the reader resolves it (fix_imports)
        qual = f"{module}.{name}"
        if qual in allowlist.VALUE_GLOBALS:
            return allowlist.VALUE_GLOBALS[qual]
        if qual not in allowlist.RECONSTRUCTORS and gadgets.is_dangerous(module, name):
            raise UnsafeCheckpoint(f"{_where(path)}: refers to {qual}, which convert refuses as a code-execution "
                                   "gadget; not saved", [Finding(qual, _where(path))])
        return GlobalRef(module, name)

    # ------------------------------------------------------------------ tensors, arrays, modules

    def storage(self, obj: Any, path: list) -> StorageRef:
        """torch.save's persistent_id → the reader's persistent_load: one StorageRef per untyped storage."""
        if isinstance(obj, torch.storage.TypedStorage):
            untyped, dtype = obj._untyped_storage, obj.dtype  # as torch.save's persistent_id reads them
        else:
            untyped, dtype = obj, torch.uint8
        if untyped.device.type == "meta":
            raise UnsupportedValue(f"{_where(path)}: a meta tensor has no data to save")
        if untyped.data_ptr() != 0:
            seen = self.storage_dtypes.setdefault(untyped.data_ptr(), dtype)
            if seen != dtype:
                raise UnsupportedValue(f"{_where(path)}: tensors view the same storage as {seen} and {dtype}; "
                                       "torch.save refuses this too")
        key = untyped._cdata
        ref = self.storages.get(key)
        if ref is None:
            nbytes = untyped.nbytes()
            location = torch.serialization.location_tag(untyped)
            # the reader's torch-free dtype (the planner and writer never see torch objects)
            ref = StorageRef(str(len(self.storages)), DTYPES_BY_NAME[str(dtype).removeprefix("torch.")], nbytes, location)
            ref.buffer = _host_view(untyped) if untyped.device.type == "cpu" else DeviceStorage(untyped)
            self.storages[key] = ref
            self.keep.append(untyped)
        return ref

    def ndarray(self, array: np.ndarray) -> NdArrayRef | None:
        """A plain numeric array as the reader records its pickle, its bytes a zero-copy view; None to reduce it."""
        dtype = array.dtype
        code = dtype.str[1:]
        if code not in NUMERIC_CODES or not (dtype.isnative or dtype.itemsize == 1):
            return None
        fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)  # what numpy's reduce records
        if not (array.flags.c_contiguous or fortran):
            return None  # numpy pickles a copy; so does reducing it
        ordered = array.T if fortran else array
        data = memoryview(ordered).cast("B") if array.size else b""
        return NdArrayRef(dtype.str, tuple(int(s) for s in array.shape), fortran, data)

    def module(self, module: torch.nn.Module, path: list, depth: int) -> ObjectRecord:
        """The ObjectRecord the reader gets for a pickled module (what `to_module_record` reads), from the live one."""
        found = self.module_records.get(id(module))
        if found is not None:
            return found
        # depth + 3: a child module or parameter sits in the record's state dict's `_modules`/`_parameters`
        cls = type(module)
        record = ObjectRecord(f"{cls.__module__}.{cls.__qualname__}", via="newobj")
        self.module_records[id(module)] = record
        self.keep.append(module)
        state: dict[str, Any] = {
            "_parameters": {n: None if p is None else self.value(p, [*path, n], depth + 3)
                            for n, p in module._parameters.items()},
            "_buffers": {n: None if b is None else self.value(b, [*path, n], depth + 3)
                         for n, b in module._buffers.items()},
            "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
            "_modules": {n: None if c is None else self.module(c, [*path, n], depth + 3)
                         for n, c in module._modules.items()},
            "training": module.training,
        }
        state.update({k: v for k, v in vars(module).items()
                      if type(k) is str and not k.startswith("_") and k != "training" and _simple(v)})
        record.state = state
        return record


def _simple(value: Any) -> bool:
    """What the reader keeps as a module attribute (checked on exact types: an IntEnum is no int in a pickle)."""
    if type(value) in _SIMPLE:
        return True
    return type(value) in (tuple, list) and len(value) <= 16 and all(type(v) in _SIMPLE for v in value)


def _host_view(storage: torch.UntypedStorage) -> Any:
    """The bytes of a CPU storage, zero-copy (a uint8 numpy view that keeps the storage alive)."""
    n = storage.nbytes()
    if n == 0:
        return b""
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (n,), (1,)).numpy()



LIVE_FORMAT = "live"


class LiveSource(Source):
    """The user's live objects (save_checkpoint) as a Source: no file, nothing to hash or check."""

    kind = "live"

    def __init__(self, obj: Any, folder: Path) -> None:
        self.path = Path(folder)  # nothing is read from a path: the ownership rule has no source to protect
        self.copy_files = []
        self.root = live_tree(obj)

    @property
    def sources(self) -> list[Path]:
        return []

    def provenance(self) -> dict[str, Any]:
        return {"format": LIVE_FORMAT, "torch": torch.__version__.split("+")[0]}

    def seal(self) -> dict[str, Any]:
        return {}
