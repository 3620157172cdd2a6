"""Casting floating tensors between F64/F32/F16/BF16 with numpy, bit for bit as torch's `.to(dtype)` on CPU.

Finite values and infinities round to nearest, ties to even (what torch and numpy both do), with two
places where numpy alone would differ from torch:
- bfloat16 has no numpy type: float32 → bfloat16 is the integer rounding torch uses,
  `(bits + 0x7FFF + lsb) >> 16`; every NaN becomes 0xFFFF, as torch's vectorised CPU kernel writes
  (the kernel every tensor of more than a few elements goes through); from float16 every NaN becomes
  0x7FC0, as torch's (scalar) half → bfloat16 conversion writes.
- float16 NaNs: torch (F16C) keeps the sign and the top 10 payload bits and sets the quiet bit;
  numpy keeps a signalling NaN signalling. NaNs are therefore rebuilt from their float32 bits.
float64 goes to float16/bfloat16 through float32, as torch does (its scalar conversions take a float).
Widening (F16/BF16 → F32 → F64) is exact; a signalling NaN comes back quiet, as from torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

FLOAT_CODES = ("F64", "F32", "F16", "BF16")
DTYPE_CODES = {"fp32": "F32", "float32": "F32", "fp16": "F16", "float16": "F16", "half": "F16",
               "bf16": "BF16", "bfloat16": "BF16"}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
CHUNK = 1 << 20  # source bytes cast at a time: bounds the memory a cast adds; cache-sized, as each cast is several passes


def _to_f32(raw: np.ndarray, code: str) -> np.ndarray:
    if code == "F32":
        return raw.view(np.float32)
    if code == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    with np.errstate(all="ignore"):
        out = raw.view(np.float64 if code == "F64" else np.float16).astype(np.float32)
    if code == "F16":  # numpy keeps a signalling NaN signalling; torch (F16C) quiets it
        out.view(np.uint32)[np.isnan(out)] |= 0x400000
    return out


def _f32_to_bf16(values: np.ndarray, nan: int = 0xFFFF) -> np.ndarray:
    bits = values.view(np.uint32)
    rounded = bits >> 16  # in place from here: one temporary, a few passes (this runs over every weight)
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    out = rounded.astype(np.uint16)
    isnan = values != values
    if isnan.any():
        out[isnan] = nan
    return out


def _f32_to_f16(values: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = values.astype(np.float16).view(np.uint16)
    nan = values != values
    if nan.any():
        bits = values.view(np.uint32)[nan]
        out[nan] = (((bits >> 16) & 0x8000) | 0x7E00 | ((bits >> 13) & 0x3FF)).astype(np.uint16)
    return out


def cast_bytes(data: Any, src: str, dst: str) -> memoryview:
    """The elements of `data` (raw little-endian bytes of dtype `src`) as dtype `dst`, as raw bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if src == dst:
        return memoryview(raw)
    if dst == "F64":
        with np.errstate(all="ignore"):
            out = _to_f32(raw, src).astype(np.float64) if src != "F64" else raw.view(np.float64)
    elif dst == "F32":
        out = _to_f32(raw, src)
    elif dst == "BF16":
        out = _f32_to_bf16(_to_f32(raw, src), 0x7FC0 if src == "F16" else 0xFFFF)  # torch's half→bf16 kernel is scalar
    else:
        out = _f32_to_f16(_to_f32(raw, src))
    return memoryview(np.ascontiguousarray(out).reshape(-1).view(np.uint8))


def cast_chunks(pieces: Iterable[Any], src: str, dst: str) -> Iterator[memoryview]:
    """Cast a stream of consecutive byte pieces of dtype `src` (pieces may split elements) to `dst`."""
    size = ITEMSIZE[src]
    carry = b""
    for piece in pieces:
        data = memoryview(piece).cast("B")
        if carry:
            data = memoryview(bytes(carry) + bytes(data))
        for start in range(0, len(data) - len(data) % size, CHUNK):
            end = min(start + CHUNK, len(data) - len(data) % size)
            yield cast_bytes(data[start:end], src, dst)
        carry = bytes(data[len(data) - len(data) % size:])
    if carry:
        raise AssertionError(f"a tensor's bytes end inside an element ({len(carry)} bytes left over)")
