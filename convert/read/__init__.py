"""Reading side: container → pickle VM → checkpoint tree. Nothing the file names is executed."""

from __future__ import annotations

from typing import Any

from ..model.records import ObjectRecord
from . import blobs as _blobs  # noqa: F401  (registers the _load_from_bytes blob reader with the VM)
from .containers import Input, ReadResult, read_container
from .modules import module_state, to_module_record

__all__ = ["Input", "ReadResult", "modules_as_state_dicts", "read_tree"]


def read_tree(inp: Input) -> ReadResult:
    """Interpret `inp` and replace every pickled nn.Module by a ModuleRecord (its state_dict)."""
    result = read_container(inp)
    result.root = modules_as_state_dicts(result.root)
    return result


def modules_as_state_dicts(root: Any) -> Any:
    """The graph `root` (records as the VM builds them) with every module's record made a ModuleRecord."""
    from ..model.tree import transform  # here: tree builds on the codec, which builds on read's records

    def record(value: Any, recurse: Any) -> Any:
        if isinstance(value, ObjectRecord) and module_state(value) is not None:
            module = to_module_record(value)
            module.state_dict = recurse(module.state_dict)
            return module
        return NotImplemented

    return transform(root, lambda v: v, record)
