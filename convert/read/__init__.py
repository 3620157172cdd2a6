"""Reading side: container → pickle VM → checkpoint tree. Nothing the file names is executed."""

from __future__ import annotations

from typing import Any

from ..model.records import ObjectRecord
from . import blobs as _blobs  # noqa: F401  (registers the _load_from_bytes blob reader with the VM)
from .containers import Input, ReadResult, read_container
from .modules import module_state, to_module_record

__all__ = ["Input", "ReadResult", "read_tree"]


def read_tree(inp: Input) -> ReadResult:
    """Interpret `inp` and replace every pickled nn.Module by a ModuleRecord (its state_dict)."""
    from ..model.tree import transform  # here: tree builds on the codec, which builds on read's records

    result = read_container(inp)

    def record(value: Any, recurse: Any) -> Any:
        if isinstance(value, ObjectRecord) and module_state(value) is not None:
            module = to_module_record(value)
            module.state_dict = recurse(module.state_dict)
            return module
        return NotImplemented

    result.root = transform(result.root, lambda v: v, record)
    return result
