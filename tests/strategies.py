"""Hypothesis strategies for checkpoint trees, reusable by every property test.

`checkpoints(fmt)` draws a whole checkpoint (the kind of tree people pass to torch.save) that
can be written in `fmt`; `save_as(tree, path, fmt)` writes it. Tensor contents are drawn as raw
bytes, so NaN payloads, subnormals and odd bit patterns are covered; tensors are views of a small
pool of storages, so slices with offsets, transposes, expanded (stride-0) views, several names on
one storage and one storage shared by two state dicts all occur.

`examples(n)` scales an example count with the active hypothesis profile ("ci" by default,
"thorough" with `--hypothesis-profile=thorough` or CKPT_HYPOTHESIS_PROFILE=thorough).
"""

from __future__ import annotations

import collections
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.helpers import LEGACY_UNSUPPORTED_DTYPES, PICKLE_FORMATS, TORCH_FORMATS, save

CI_MAX_EXAMPLES = 100  # the "ci" profile's max_examples; `examples()` scales relative to it


def examples(n: int) -> int:
    """`n` examples under the ci profile, proportionally more under a bigger profile."""
    return max(1, n * settings.default.max_examples // CI_MAX_EXAMPLES)


def budget(n: int, **kwargs: object) -> settings:
    """Settings for a property test: `examples(n)` examples, no per-example deadline (CI machines
    are shared and slow; hangs are caught by explicit timeouts where they matter)."""
    kwargs.setdefault("deadline", None)
    kwargs.setdefault("suppress_health_check", [HealthCheck.too_slow, HealthCheck.data_too_large])
    return settings(max_examples=examples(n), **kwargs)


# ------------------------------------------------------------------------------------ dtypes

# Every dtype safetensors has that torch has, plus the ones the converter encodes losslessly.
SAFETENSORS_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.uint16, torch.uint32, torch.uint64,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
]
ENCODED_DTYPES = [torch.complex128, torch.complex32, torch.float8_e8m0fnu, torch.float4_e2m1fn_x2, torch.bits8, torch.bits16]
TENSOR_DTYPES = SAFETENSORS_DTYPES + ENCODED_DTYPES
# torch.save(_use_new_zipfile_serialization=False) itself cannot write the newer dtypes.
LEGACY_DTYPES = [d for d in TENSOR_DTYPES if d not in LEGACY_UNSUPPORTED_DTYPES and d.itemsize != 0 and d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)]
FLOAT_DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128}

NUMPY_CODES = ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]


# ------------------------------------------------------------------------------------ plain leaves

def _float_from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


SPECIAL_FLOATS = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 2.2250738585072014e-308,
                  _float_from_bits(0x7FF8_0000_0000_1234), _float_from_bits(0xFFF8_DEAD_BEEF_0001),
                  _float_from_bits(0x7FF0_0000_0000_0001)]  # quiet NaN payloads, a signalling NaN

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.integers(0, 2**64 - 1).map(_float_from_bits),  # any bit pattern, NaN payloads included
    st.sampled_from(SPECIAL_FLOATS),
)
ints = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**300), 2**300),  # beyond 64 bits
    st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**1000, -(2**1000)]),
)
# Surrogate-free unicode, astral characters (emoji, CJK extension B, ...) drawn on purpose.
_chars = st.one_of(st.characters(exclude_categories=("Cs",)), st.characters(min_codepoint=0x10000, exclude_categories=("Cs",)))
texts = st.text(_chars, max_size=10)
keys = st.one_of(texts, ints, st.sampled_from(["", "$tensor", "$dict", "__metadata__", "a.b", "..", "/"]))
str_keys = st.one_of(texts, st.sampled_from(["weight", "bias", "layer.0.weight", "", "$tensor", "__metadata__", "..", "-ema"]))


@st.composite
def numpy_scalars(draw: st.DrawFn) -> np.generic:
    code = draw(st.sampled_from(NUMPY_CODES))
    size = int(code[1:])
    raw = bytes([draw(st.integers(0, 1))]) if code == "b1" else draw(st.binary(min_size=size, max_size=size))
    return np.frombuffer(raw, dtype=np.dtype(code))[0]


@st.composite
def numpy_arrays(draw: st.DrawFn) -> np.ndarray:
    """Numeric arrays of any byte order and memory order, 0-d and empty included, contents as raw bytes."""
    code = draw(st.sampled_from(NUMPY_CODES))
    order = draw(st.sampled_from("<>")) if int(code[1:]) > 1 else "|"
    dtype = np.dtype(order + code)
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    numel = math.prod(shape)
    if code == "b1":
        raw = bytes(draw(st.lists(st.integers(0, 1), min_size=numel, max_size=numel)))
    else:
        raw = draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy() if numel else np.zeros(shape, dtype=dtype)
    layout = draw(st.sampled_from(["C", "F", "T", "slice"]))
    if layout == "F":
        array = np.asfortranarray(array)
    elif layout == "T":
        array = array.T
    elif layout == "slice" and array.ndim:
        array = array[::2]  # non-contiguous: pickled as a contiguous copy
    return array


torch_sizes = st.lists(st.integers(0, 2**40), max_size=5).map(torch.Size)
torch_dtypes = st.sampled_from([*TENSOR_DTYPES, torch.qint8, torch.quint8])
numpy_dtypes = st.sampled_from(NUMPY_CODES).flatmap(
    lambda c: st.sampled_from(["<", ">"] if int(c[1:]) > 1 else ["|"]).map(lambda o: np.dtype(o + c)))

plain_leaves = st.one_of(
    st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=16),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    numpy_scalars(), numpy_arrays(), torch_sizes, torch_dtypes, numpy_dtypes,
)


# ------------------------------------------------------------------------------------ tensors

def raw_tensor(raw: bytes, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D tensor whose bytes are exactly `raw` (no float arithmetic: payloads survive)."""
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone().view(dtype)


@st.composite
def storages(draw: st.DrawFn, dtypes: list[torch.dtype]) -> torch.Tensor:
    """A flat tensor standing for one storage, contents drawn as raw bytes."""
    dtype = draw(st.sampled_from(dtypes))
    numel = draw(st.integers(0, 48))
    if dtype == torch.bool:  # a bool byte other than 0/1 is not a value torch ever writes
        raw = bytes(draw(st.lists(st.integers(0, 1), min_size=numel, max_size=numel)))
    else:
        raw = draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    return raw_tensor(raw, dtype)


@st.composite
def views(draw: st.DrawFn, storage: torch.Tensor) -> torch.Tensor:
    """A view of `storage` as people make them: reshape, slice with offset, transpose, expand, select."""
    n = storage.numel()
    if draw(st.booleans()) or n == 0:  # rank up to 10, few elements: large-rank and empty shapes
        shape = draw(st.lists(st.sampled_from([1, 2, 1, 2, 0]), max_size=10))
    else:
        shape = draw(st.lists(st.integers(1, 4), max_size=4))
    numel = math.prod(shape)
    if numel > n:
        shape, numel = [draw(st.integers(0, n))], None
        numel = shape[0]
    start = draw(st.integers(0, n - numel))
    t = storage[start:start + numel].view(shape)  # 0-d when shape == []
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["transpose", "transpose", "slice", "slice", "expand", "expand", "select", "permute", "whole"]))
        if op == "whole":
            t = storage
        elif t.dim() >= 2 and op == "transpose":
            i, j = draw(st.permutations(range(t.dim())))[:2]
            t = t.transpose(i, j)
        elif t.dim() >= 1 and op == "permute":
            t = t.permute(*draw(st.permutations(range(t.dim()))))
        elif t.dim() >= 1 and op == "slice":
            d = draw(st.integers(0, t.dim() - 1))
            lo = draw(st.integers(0, t.shape[d]))
            t = t.narrow(d, lo, t.shape[d] - lo)[(slice(None),) * d + (slice(None, None, draw(st.integers(1, 3))),)]
        elif op == "expand" and t.dim() < 8:
            d = draw(st.integers(0, t.dim()))
            t = t.unsqueeze(d).expand(*t.shape[:d], draw(st.integers(0, 3)), *t.shape[d:])
        elif op == "select" and t.dim() >= 1 and t.shape[0] > 0:
            t = t[draw(st.integers(0, t.shape[0] - 1))]
    if t.dtype in FLOAT_DTYPES and draw(st.integers(0, 9)) == 0:
        t = torch.nn.Parameter(t, requires_grad=draw(st.booleans()))
    return t


class Pool(list):
    """The storages one checkpoint's tensors are views of (a short repr: strategies get printed)."""

    def __repr__(self) -> str:
        return f"<pool of {len(self)} storages>"


@st.composite
def pool_views(draw: st.DrawFn, pool: Pool) -> torch.Tensor:
    return draw(views(pool[draw(st.integers(0, len(pool) - 1))]))


def describe(value: object, depth: int = 0, seen: set | None = None) -> str:
    """A repr that works for every drawn value (torch cannot print bits8/float4 tensors) and shows float bits.
    A container met again (shared or cyclic) prints as `<same as #id>`."""
    seen = set() if seen is None else seen
    if depth > 30:
        return "..."
    if type(value) in (dict, collections.OrderedDict, list, tuple) and value:
        if id(value) in seen:
            return f"<same as #{id(value) % 10**6}>"
        seen.add(id(value))
    if isinstance(value, torch.Tensor):
        kind = "Parameter" if isinstance(value, torch.nn.Parameter) else "tensor"
        return (f"{kind}({value.dtype}, shape={list(value.shape)}, stride={list(value.stride())}, "
                f"offset={value.storage_offset()}, storage@{value.untyped_storage().data_ptr() % 10**6}"
                f"/{value.untyped_storage().nbytes()}B)")
    if type(value) is float:
        return f"float({value!r}, bits={struct.pack('>d', value).hex()})"
    if isinstance(value, (dict, collections.OrderedDict)):
        inner = ", ".join(f"{describe(k, depth + 1, seen)}: {describe(v, depth + 1, seen)}" for k, v in value.items())
        extra = f" _metadata={value._metadata!r}" if hasattr(value, "_metadata") else ""
        return f"{type(value).__name__}({{{inner}}}){extra}"
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        inner = ", ".join(describe(v, depth + 1, seen) for v in value)
        return f"[{inner}]" if type(value) is list else f"({inner},)"
    if isinstance(value, np.ndarray):
        return (f"ndarray({value.dtype.str}, shape={list(value.shape)}, F={value.flags.f_contiguous}, "
                f"hex={value.tobytes()[:32].hex()})")
    return repr(value)


# ------------------------------------------------------------------------------------ trees

def _containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.lists(st.tuples(keys, children), max_size=4).map(dict),
        st.lists(st.tuples(keys, children), max_size=4).map(collections.OrderedDict),
    )


@st.composite
def state_dicts(draw: st.DrawFn, tensor: st.SearchStrategy) -> dict:
    """A state dict: str → tensor, plain dict or OrderedDict with torch's `_metadata`."""
    items = draw(st.lists(st.tuples(str_keys, tensor), min_size=1, max_size=5))
    if draw(st.booleans()):
        sd = collections.OrderedDict(items)
        if draw(st.booleans()):
            sd._metadata = collections.OrderedDict([("", {"version": 1}), ("0", {"version": draw(st.integers(1, 3))})])
        return sd
    return dict(items)


def tensor_dtypes(fmt: str) -> list[torch.dtype]:
    return LEGACY_DTYPES if fmt == "legacy" else TENSOR_DTYPES


@dataclass
class Drawn:
    """A drawn checkpoint and the format it is to be written in."""

    tree: object
    fmt: str

    def __repr__(self) -> str:
        return f"Drawn(fmt={self.fmt!r}, tree={describe(self.tree)})"

    def save(self, path) -> object:
        return save(self.tree, path, self.fmt)


@st.composite
def checkpoints(draw: st.DrawFn, fmt: str, max_leaves: int = 12) -> object:
    """A checkpoint tree writable in `fmt`: tensors (for torch formats), state dicts, nested plain data."""
    if fmt in PICKLE_FORMATS:  # plain pickle: no tensors (they need torch's persistent ids)
        leaf = plain_leaves
    else:
        pool = Pool(draw(st.lists(storages(tensor_dtypes(fmt)), min_size=1, max_size=3)))
        tensor = pool_views(pool)
        leaf = st.one_of(plain_leaves, tensor, state_dicts(tensor))
    tree = st.recursive(leaf, _containers, max_leaves=max_leaves)
    shape = draw(st.sampled_from(["tree", "training", "state_dict"] if fmt in TORCH_FORMATS else ["tree", "training"]))
    if shape == "state_dict":
        return draw(state_dicts(tensor))
    if shape == "training":  # {"epoch": .., "model": sd, "ema": sd, "optimizer": {...}, ...}
        out = {}
        for k in draw(st.lists(str_keys, min_size=1, max_size=5, unique=True)):
            out[k] = draw(tree if fmt in PICKLE_FORMATS or draw(st.booleans()) else state_dicts(tensor))
        return out
    return draw(tree)


def _mutable_containers(root: object) -> list:
    """Every list, dict and OrderedDict reachable from `root`, each once (graphs: shared ones too)."""
    out, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if type(node) not in (dict, collections.OrderedDict, list, tuple) or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node) is not tuple:
            out.append(node)
        stack.extend(node.values() if isinstance(node, dict) else node)
    return out


@st.composite
def graph_checkpoints(draw: st.DrawFn, fmt: str, max_leaves: int = 10) -> object:
    """A drawn checkpoint turned into a graph: containers referenced again from elsewhere (shared), from
    inside themselves or their descendants (cycles), sometimes through a tuple (a cycle pickle's memo closes)."""
    root = {"tree": draw(checkpoints(fmt, max_leaves))}
    for i in range(draw(st.integers(1, 4))):
        nodes = _mutable_containers(root)
        target, value = draw(st.sampled_from(nodes)), draw(st.sampled_from(nodes))
        if draw(st.booleans()):
            value = (value, i)  # a tuple on the path: a cycle through an immutable value
        if type(target) is list:
            target.append(value)
        else:
            target[f"ref{i}"] = value
    return root


formats = st.one_of(st.sampled_from(TORCH_FORMATS), st.sampled_from(PICKLE_FORMATS))  # half the draws have tensors


@st.composite
def drawn_checkpoints(draw: st.DrawFn, fmts: st.SearchStrategy = formats, max_leaves: int = 12) -> Drawn:
    fmt = draw(fmts)
    return Drawn(draw(checkpoints(fmt, max_leaves)), fmt)


@st.composite
def drawn_graphs(draw: st.DrawFn, fmts: st.SearchStrategy = formats, max_leaves: int = 10) -> Drawn:
    fmt = draw(fmts)
    return Drawn(draw(graph_checkpoints(fmt, max_leaves)), fmt)
