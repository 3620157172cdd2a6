"""Numpy values from a pickle, rebuilt as data: arrays, dtypes and scalars of numeric kinds only.

numpy pickles an array as `_reconstruct(ndarray, (0,), b'b')` followed by BUILD with
`(version, shape, dtype, is_fortran, raw_bytes)`; a dtype as `dtype('f4', False, True)` followed by
BUILD with `(3, byteorder, ...)`; a scalar as `scalar(dtype, raw_bytes)`. Nothing of numpy is called.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import MalformedCheckpoint, UnsupportedValue
from .limits import LIMITS
from .records import GlobalRef, NdArrayRef, NpDType, NpScalar

# numpy type codes (kind + itemsize) this tool stores; everything else is refused by name.
NUMERIC_CODES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
_NATIVE = "<" if sys.byteorder == "little" else ">"
MAX_NDIM = LIMITS.ndim


def _fail(message: str) -> None:
    raise MalformedCheckpoint(message)


def itemsize(dtype_str: str) -> int:
    return int(dtype_str[2:])


def _finish(code: str, byteorder: str) -> str:
    if code not in NUMERIC_CODES:
        raise UnsupportedValue(f"numpy dtype {code!r} is not numeric; only numeric numpy values are supported")
    if int(code[1:]) == 1:
        return "|" + code
    if byteorder in ("=", "|"):
        byteorder = _NATIVE
    if byteorder not in ("<", ">"):
        _fail(f"numpy byte order {byteorder!r} is not valid")
    return byteorder + code


def make_npdtype(*args: Any) -> NpDType:
    if not (1 <= len(args) <= 3 and type(args[0]) is str and len(args[0]) <= 8):
        _fail("numpy.dtype expects a short type code")
    code = args[0].lstrip("<>|=")
    if code not in NUMERIC_CODES:
        raise UnsupportedValue(f"numpy dtype {args[0]!r} is not numeric; only numeric numpy values are supported")
    prefix = args[0][0] if args[0][0] in "<>|=" else "="
    return NpDType(_finish(code, prefix))


def build_npdtype(dtype: NpDType, state: Any) -> None:
    """BUILD on a dtype: state[1] is its byte order."""
    if not (type(state) is tuple and len(state) >= 2 and type(state[1]) is str):
        _fail("numpy dtype state is malformed")
    dtype.str = _finish(dtype.str[1:], state[1])


def new_ndarray(*args: Any) -> NdArrayRef:
    if not (len(args) == 3 and isinstance(args[0], GlobalRef) and args[0].qualname == "numpy.ndarray"):
        raise UnsupportedValue("only plain numpy.ndarray arrays are supported (not subclasses)")
    return NdArrayRef(dtype="", shape=(), fortran=False, data=None)


def _checked_array(dtype: Any, shape: Any, fortran: Any, data: Any) -> tuple:
    if not isinstance(dtype, NpDType):
        _fail("numpy array dtype is malformed")
    if type(shape) is not tuple or len(shape) > MAX_NDIM or not all(type(s) is int and 0 <= s < 1 << 62 for s in shape):
        _fail("numpy array shape is malformed")
    if type(fortran) is not bool:
        _fail("numpy array order flag is malformed")
    if isinstance(data, list):
        raise UnsupportedValue("numpy object arrays are not supported")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        _fail("numpy array data must be bytes")
    numel = 1
    for s in shape:
        numel *= s
    if numel * itemsize(dtype.str) != len(data):
        _fail(f"numpy array of shape {list(shape)} and dtype {dtype.str} needs {numel * itemsize(dtype.str)} bytes, "
              f"the file holds {len(data)}")
    return dtype.str, shape, fortran, data


def build_ndarray(array: NdArrayRef, state: Any) -> None:
    """BUILD on an array: (version, shape, dtype, is_fortran, raw) or the 4-tuple without version."""
    if type(state) is tuple and len(state) == 5:
        state = state[1:]
    if not (type(state) is tuple and len(state) == 4):
        _fail("numpy array state is malformed")
    shape, dtype, fortran, data = state
    array.dtype, array.shape, array.fortran, array.data = _checked_array(dtype, shape, fortran, data)
    if array.dtype[0] != "|" and array.dtype[0] != _NATIVE:
        # numpy's __setstate__ gives back a native-order array with the same values; do the same.
        import numpy as np  # here, not at the top: scanning never needs numpy (its import is ~70 ms)

        native = _NATIVE + array.dtype[1:]
        array.data = np.frombuffer(array.data, dtype=np.dtype(array.dtype)).astype(native).tobytes()
        array.dtype = native


def make_ndarray_from_buffer(*args: Any) -> NdArrayRef:
    """numpy's protocol-5 form: _frombuffer(buffer, dtype, shape, order)."""
    if len(args) != 4 or args[3] not in ("C", "F"):
        _fail("numpy _frombuffer arguments are malformed")
    buf, dtype, shape, order = args
    return NdArrayRef(*_checked_array(dtype, shape, order == "F", buf))


def make_npscalar(*args: Any) -> NpScalar:
    if not (len(args) == 2 and isinstance(args[0], NpDType) and isinstance(args[1], (bytes, bytearray))):
        _fail("numpy scalar arguments are malformed")
    dtype, data = args
    if len(data) != itemsize(dtype.str):
        _fail(f"numpy scalar of dtype {dtype.str} needs {itemsize(dtype.str)} bytes, the file holds {len(data)}")
    return NpScalar(dtype.str, bytes(data))
