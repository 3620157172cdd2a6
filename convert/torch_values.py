"""The reader's torch-free values (DType, TorchSize, Device) as real torch objects, for the load side.

The read/plan/write path never imports torch; everything that hands tensors or torch values to
the user (load_checkpoint, read_checkpoint, verify) goes through here.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .dtypes import DTYPE_NAME_BY_CODE
from .errors import MalformedCheckpoint
from .read.torch_types import DTYPES_BY_NAME, QUANTIZED_DTYPES, Device, DType, TorchSize


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a dtype name; a ValueError for names unknown here or to this torch."""
    dtype = DTYPES_BY_NAME.get(name)
    found = getattr(torch, dtype.name, None) if dtype is not None else None
    if not isinstance(found, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}" + (f" (this torch {torch.__version__} lacks it)" if dtype else ""))
    return found


def tensor_dtype(name: str, where: str) -> torch.dtype:
    """The dtype of a tensor the sidecar describes: only dtypes convert writes (`dtypes.encoding_for`).

    A quantized dtype has no safetensors encoding, so convert never writes one; a sidecar naming it is
    hand-made, and the tensor it would build fails later inside torch (an INTERNAL ASSERT on use).
    """
    dtype = DTYPES_BY_NAME.get(name)
    if dtype in QUANTIZED_DTYPES:
        raise MalformedCheckpoint(f"{where} has dtype {name}, which ckpt-convert never writes (quantized); refusing")
    return torch_dtype(name)


@functools.cache
def torch_dtype_for_code(code: str) -> torch.dtype:
    """The torch dtype of a safetensors code ('F32'); KeyError for codes this torch cannot hold."""
    return torch_dtype(DTYPE_NAME_BY_CODE[code])


def to_torch(value: Any) -> Any:
    """DType → torch.dtype, TorchSize → torch.Size, Device → torch.device; anything else as it is."""
    if isinstance(value, DType):
        return torch_dtype(value.name)
    if isinstance(value, TorchSize):
        return torch.Size(value)
    if isinstance(value, Device):
        return torch.device(value.type, value.index) if value.index is not None else torch.device(value.type)
    return value
