"""Whole-model pickles: an nn.Module found in the tree becomes what `module.state_dict()` returns.

A pickled module is an object whose state (`__dict__`) holds `_parameters`, `_buffers` and
`_modules`; its class is never needed. The walk mirrors `nn.Module.state_dict`: parameters, then
persistent buffers, then children with `prefix.` (a child shared under two names appears under
both), and `_metadata[prefix] = {"version": cls._version}`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from ..errors import MalformedCheckpoint
from ..model.records import ModuleRecord, ObjectRecord, TensorRef

MODULE_KEYS = ("_parameters", "_buffers", "_modules")

# `_version` of torch.nn classes where it is not nn.Module's 1 (the class attribute is not pickled).
MODULE_VERSIONS: dict[str, int] = {
    **{f"torch.nn.modules.batchnorm.{c}": 2 for c in (
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d",
        "SyncBatchNorm", "_BatchNorm", "_NormBase")},
    **{f"torch.nn.modules.instancenorm.{c}": 2 for c in (
        "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d",
        "LazyInstanceNorm3d", "_InstanceNorm")},
}
_SIMPLE = (bool, int, float, str, type(None))


def module_state(record: Any) -> dict | None:
    """The module's `__dict__` if `record` is a pickled nn.Module, else None."""
    if not isinstance(record, ObjectRecord):
        return None
    state = record.state
    if type(state) is tuple and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict, slots) form
    if isinstance(state, dict) and all(isinstance(state.get(k), dict) for k in MODULE_KEYS):
        return state
    return None


def _detached(tensor: Any, where: str) -> TensorRef:
    if not isinstance(tensor, TensorRef):
        raise MalformedCheckpoint(f"module entry {where} is a {type(tensor).__name__}, not a tensor")
    return dataclasses.replace(tensor, is_parameter=False, requires_grad=False, attrs={})


def to_module_record(record: ObjectRecord) -> ModuleRecord:
    destination: collections.OrderedDict = collections.OrderedDict()
    metadata: collections.OrderedDict = collections.OrderedDict()
    tree = _save(record, destination, metadata, "", set())
    destination._metadata = metadata  # type: ignore[attr-defined]
    return ModuleRecord(record.qualname, destination, tree)


def _save(record: ObjectRecord, dest: collections.OrderedDict, metadata: dict, prefix: str, active: set[int]) -> dict:
    if id(record) in active:
        raise MalformedCheckpoint(f"module {prefix[:-1] or '<root>'} contains itself")
    active.add(id(record))
    state = module_state(record)
    assert state is not None
    metadata[prefix[:-1]] = {"version": MODULE_VERSIONS.get(record.qualname, 1)}
    for name, param in state["_parameters"].items():
        if param is not None:
            dest[prefix + str(name)] = _detached(param, prefix + str(name))
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, buf in state["_buffers"].items():
        if buf is not None and name not in non_persistent:
            dest[prefix + str(name)] = _detached(buf, prefix + str(name))
    children: dict[str, Any] = {}
    for name, child in state["_modules"].items():
        if child is None:
            children[str(name)] = None
        elif module_state(child) is None:
            children[str(name)] = {"class": getattr(child, "qualname", type(child).__name__), "not_a_module": True}
        else:
            children[str(name)] = _save(child, dest, metadata, f"{prefix}{name}.", active)
    active.discard(id(record))
    attributes = {k: v for k, v in state.items()
                  if type(k) is str and not k.startswith("_") and k != "training" and _is_simple(v)}
    return {"class": record.qualname, "training": state.get("training"), "attributes": attributes,
            "children": children}


def _is_simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    return type(value) in (tuple, list) and len(value) <= 16 and all(isinstance(v, _SIMPLE) for v in value)
