"""Fixed tables from names a pickle may use to torch dtypes. Names are looked up, never getattr'd."""

from __future__ import annotations

import torch

# Legacy typed-storage classes (`torch.FloatStorage`, ...) and the dtype of their elements.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "BFloat16Storage": torch.bfloat16,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}
QUANTIZED_STORAGES: dict[str, torch.dtype] = {
    "QInt8Storage": torch.qint8, "QInt32Storage": torch.qint32, "QUInt8Storage": torch.quint8,
    "QUInt4x2Storage": torch.quint4x2, "QUInt2x4Storage": torch.quint2x4,
}
STORAGE_MODULES = {"torch", "torch.storage", "torch.cuda"}

# Every dtype a pickle can name as `torch.<name>`, by that name.
_DTYPE_NAMES = [
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex128", "complex64", "complex32", "uint16", "uint32", "uint64",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    "qint8", "qint32", "quint8", "quint4x2", "quint2x4",
    # aliases torch also exposes
    "double", "float", "half", "long", "int", "short", "cdouble", "cfloat", "chalf",
]
DTYPES_BY_NAME: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in _DTYPE_NAMES if isinstance(getattr(torch, name, None), torch.dtype)
}


def dtype_name(dtype: torch.dtype) -> str:
    """Canonical name: 'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    return DTYPES_BY_NAME[name]


QUANTIZED_DTYPES = {DTYPES_BY_NAME[n] for n in ("qint8", "qint32", "quint8", "quint4x2", "quint2x4") if n in DTYPES_BY_NAME}
