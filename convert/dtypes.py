"""How each torch dtype is stored in safetensors: its own code, or a documented lossless encoding.

- native: safetensors has the dtype (F32, BF16, F8_E4M3, U16, ...).
- "view_as_real": complex dtypes safetensors lacks (complex128, complex32) are stored as their
  real/imaginary float pairs with one extra trailing dimension of 2 (`torch.view_as_real`).
- "bitcast": 1- or 2-byte dtypes safetensors lacks (float8_e8m0fnu, float4_e2m1fn_x2, bits*) are
  stored as U8/U16 of the same bytes.
The sidecar always records the true dtype, so the loader gives back exactly the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UnsupportedValue
from .read.torch_types import DTYPES_BY_NAME, QUANTIZED_DTYPES, dtype_name

NATIVE: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
}
TORCH_BY_CODE: dict[str, torch.dtype] = {code: dtype for dtype, code in NATIVE.items()}
ITEMSIZE_BY_CODE: dict[str, int] = {code: dtype.itemsize for dtype, code in NATIVE.items()}
VIEW_AS_REAL: dict[torch.dtype, str] = {torch.complex128: "F64", torch.complex32: "F16"}

# numpy type codes (kind + itemsize, as in records.NdArrayRef.dtype[1:]) → torch dtype of the same layout
NUMPY_TO_TORCH: dict[str, torch.dtype] = {
    "b1": torch.bool, "i1": torch.int8, "i2": torch.int16, "i4": torch.int32, "i8": torch.int64,
    "u1": torch.uint8, "u2": torch.uint16, "u4": torch.uint32, "u8": torch.uint64,
    "f2": torch.float16, "f4": torch.float32, "f8": torch.float64, "c8": torch.complex64, "c16": torch.complex128,
}


@dataclass(frozen=True)
class Encoding:
    code: str  # safetensors dtype code
    encoding: str | None  # None, "view_as_real" or "bitcast"

    def stored_shape(self, shape: list[int] | tuple[int, ...]) -> list[int]:
        return [*shape, 2] if self.encoding == "view_as_real" else list(shape)


def encoding_for(dtype: torch.dtype, where: str) -> Encoding:
    """How a tensor of `dtype` is stored; UnsupportedValue names `where` if it cannot be."""
    if dtype in NATIVE:
        return Encoding(NATIVE[dtype], None)
    if dtype in VIEW_AS_REAL:
        return Encoding(VIEW_AS_REAL[dtype], "view_as_real")
    if dtype in QUANTIZED_DTYPES:
        raise UnsupportedValue(f"{where} is {dtype_name(dtype)}: quantized tensors have no lossless safetensors encoding")
    if dtype.itemsize in (1, 2):
        return Encoding("U8" if dtype.itemsize == 1 else "U16", "bitcast")
    raise UnsupportedValue(f"{where} is {dtype_name(dtype)}, which safetensors cannot hold")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a sidecar dtype name; a ValueError for names the schema should have refused."""
    if name not in DTYPES_BY_NAME:
        raise ValueError(f"unknown dtype {name!r}")
    return DTYPES_BY_NAME[name]
