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

from ..errors import UnsupportedValue
from .torch_types import CANONICAL, QUANTIZED_DTYPES, DType

# torch dtype name → safetensors code, for the dtypes safetensors has.
NATIVE_CODES: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64", "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
NATIVE: dict[DType, str] = {CANONICAL[name]: code for name, code in NATIVE_CODES.items()}
DTYPE_NAME_BY_CODE: dict[str, str] = {code: name for name, code in NATIVE_CODES.items()}
ITEMSIZE_BY_CODE: dict[str, int] = {code: CANONICAL[name].itemsize for name, code in NATIVE_CODES.items()}
VIEW_AS_REAL: dict[DType, str] = {CANONICAL["complex128"]: "F64", CANONICAL["complex32"]: "F16"}

# numpy type codes (kind + itemsize, as in records.NdArrayRef.dtype[1:]) → torch dtype of the same layout
NUMPY_TO_DTYPE: dict[str, DType] = {code: CANONICAL[name] for code, name in {
    "b1": "bool", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64",
    "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64",
    "f2": "float16", "f4": "float32", "f8": "float64", "c8": "complex64", "c16": "complex128",
}.items()}


@dataclass(frozen=True)
class Encoding:
    code: str  # safetensors dtype code
    encoding: str | None  # None, "view_as_real" or "bitcast"

    def stored_shape(self, shape: list[int] | tuple[int, ...]) -> list[int]:
        return [*shape, 2] if self.encoding == "view_as_real" else list(shape)


def encoding_for(dtype: DType, where: str) -> Encoding:
    """How a tensor of `dtype` is stored; UnsupportedValue names `where` if it cannot be."""
    if dtype in NATIVE:
        return Encoding(NATIVE[dtype], None)
    if dtype in VIEW_AS_REAL:
        return Encoding(VIEW_AS_REAL[dtype], "view_as_real")
    if dtype in QUANTIZED_DTYPES:
        raise UnsupportedValue(f"{where} is {dtype.name}: quantized tensors have no lossless safetensors encoding")
    if dtype.itemsize in (1, 2):
        return Encoding("U8" if dtype.itemsize == 1 else "U16", "bitcast")
    raise UnsupportedValue(f"{where} is {dtype.name}, which safetensors cannot hold")
