"""Turn a read graph into real values: torch tensors (aliasing kept), numpy arrays, dtypes.

Used by `read_checkpoint` (a safe stand-in for torch.load) and by `verify`. Bytes are copied
out of the input, so the result does not depend on the input staying open.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import MalformedCheckpoint, UnsupportedValue
from ..model.records import ModuleRecord, NdArrayRef, NpDType, NpScalar, StorageRef, TensorRef, Unsupported
from ..model.torch_values import to_torch
from ..model.tree import transform


def materialize(root: Any) -> Any:
    storages: dict[int, torch.UntypedStorage] = {}
    keep: list[StorageRef] = []

    def storage(ref: StorageRef) -> torch.UntypedStorage:
        if id(ref) not in storages:
            keep.append(ref)
            with ref.data() as data:
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
            storages[id(ref)] = raw.untyped_storage()
        return storages[id(ref)]

    def leaf(value: Any) -> Any:
        if isinstance(value, TensorRef):
            try:
                dtype = to_torch(value.dtype)
                t = torch.empty(0, dtype=dtype).set_(storage(value.storage), value.offset, value.shape, value.stride)
                if value.conj or value.neg:
                    torch._C._set_tensor_metadata(t, {k: True for k, on in (("conj", value.conj), ("neg", value.neg)) if on})
                if value.is_parameter:
                    t = torch.nn.Parameter(t, requires_grad=value.requires_grad)
                elif value.requires_grad:
                    t.requires_grad_(True)
            except RuntimeError as exc:
                raise MalformedCheckpoint(f"tensor cannot be rebuilt: {str(exc).splitlines()[0]}") from None
            t.__dict__.update(value.attrs)
            return t
        if isinstance(value, NdArrayRef):
            dtype = np.dtype(value.dtype)
            flat = np.frombuffer(bytes(value.data), dtype=dtype) if len(value.data) else np.empty(0, dtype=dtype)
            return flat.reshape(value.shape, order="F" if value.fortran else "C").copy(order="F" if value.fortran else "C")
        if isinstance(value, NpScalar):
            return np.frombuffer(value.data, dtype=np.dtype(value.dtype))[0]
        if isinstance(value, NpDType):
            return np.dtype(value.str)
        if isinstance(value, Unsupported):
            raise UnsupportedValue(value.reason)
        return to_torch(value)

    def record(value: Any, recurse: Any) -> Any:
        if isinstance(value, ModuleRecord):
            return recurse(value.state_dict)
        return NotImplemented

    return transform(root, leaf, record)
