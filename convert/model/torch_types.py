"""torch's value types as plain data: dtypes, sizes and devices, without importing torch.

The reader, the planner and the writer handle tensors as byte ranges with dtype/shape/stride
arithmetic, so `scan` and `convert` run where torch is not installed. Names a pickle may use are
looked up in these fixed tables, never getattr'd. The loader (and `read_checkpoint`) turn these
values into real torch objects (`convert.load.torch_values`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """A torch dtype by its canonical name ('float32') and element size in bytes."""

    name: str
    itemsize: int

    def __str__(self) -> str:  # what str(torch.float32) gives
        return f"torch.{self.name}"

    __repr__ = __str__


class TorchSize(tuple):
    """A `torch.Size` read from a checkpoint: a tuple of ints that remembers it was a Size."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"torch.Size({list(self)})"


@dataclass(frozen=True)
class Device:
    """A `torch.device` read from a checkpoint ('cpu', 'cuda:1')."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


DEVICE_TYPES = frozenset({"cpu", "cuda", "mps", "meta", "xpu", "hpu", "xla", "privateuseone", "mtia"})


def parse_device(text: object, index: object = None) -> Device:
    """`torch.device(text[, index])` as data; ValueError names what is wrong (the caller labels it)."""
    if type(text) is not str or len(text) >= 32:
        raise ValueError("torch.device expects a short string")
    kind, _, own_index = text.partition(":")
    if kind not in DEVICE_TYPES or not (own_index == "" or own_index.isdigit()):
        raise ValueError(f"unknown device {text!r}")
    if index is not None:
        if own_index != "" or type(index) is not int or not 0 <= index < 1 << 16:
            raise ValueError("bad device index")
        return Device(kind, index)
    return Device(kind, int(own_index) if own_index else None)


# Canonical dtype names and their element sizes (torch's own table, as data).
_ITEMSIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "bool": 1, "complex128": 16, "complex64": 8, "complex32": 4, "uint16": 2, "uint32": 4, "uint64": 8,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1, "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    "qint8": 1, "qint32": 4, "quint8": 1, "quint4x2": 1, "quint2x4": 1,
}
# Other names torch exposes for the same dtypes (`torch.double is torch.float64`).
_ALIASES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64", "int": "int32",
            "short": "int16", "cdouble": "complex128", "cfloat": "complex64", "chalf": "complex32"}

CANONICAL: dict[str, DType] = {name: DType(name, size) for name, size in _ITEMSIZES.items()}
# Every dtype a pickle can name as `torch.<name>`, by that name.
DTYPES_BY_NAME: dict[str, DType] = {**CANONICAL, **{alias: CANONICAL[name] for alias, name in _ALIASES.items()}}
QUANTIZED_DTYPES = frozenset(CANONICAL[n] for n in ("qint8", "qint32", "quint8", "quint4x2", "quint2x4"))

# Legacy typed-storage classes (`torch.FloatStorage`, ...) and the dtype of their elements.
STORAGE_DTYPES: dict[str, DType] = {
    "DoubleStorage": CANONICAL["float64"],
    "FloatStorage": CANONICAL["float32"],
    "HalfStorage": CANONICAL["float16"],
    "LongStorage": CANONICAL["int64"],
    "IntStorage": CANONICAL["int32"],
    "ShortStorage": CANONICAL["int16"],
    "CharStorage": CANONICAL["int8"],
    "ByteStorage": CANONICAL["uint8"],
    "BoolStorage": CANONICAL["bool"],
    "BFloat16Storage": CANONICAL["bfloat16"],
    "ComplexDoubleStorage": CANONICAL["complex128"],
    "ComplexFloatStorage": CANONICAL["complex64"],
    "UntypedStorage": CANONICAL["uint8"],
}
QUANTIZED_STORAGES: dict[str, DType] = {
    "QInt8Storage": CANONICAL["qint8"], "QInt32Storage": CANONICAL["qint32"], "QUInt8Storage": CANONICAL["quint8"],
    "QUInt4x2Storage": CANONICAL["quint4x2"], "QUInt2x4Storage": CANONICAL["quint2x4"],
}
STORAGE_MODULES = {"torch", "torch.storage", "torch.cuda"}


def dtype_name(dtype: DType) -> str:
    """Canonical name: 'float32'."""
    return dtype.name


def dtype_from_name(name: str) -> DType:
    return DTYPES_BY_NAME[name]
