"""Typed JSON, the sidecar's encoding of values: one registry of tags that encodes (the writer),
decodes (the loader), describes (`inspect`) and is checked against the schema's `value` definition.

Plain JSON stands for itself: null, booleans, strings, int64-range ints, finite floats, lists and
str-keyed dicts without "$" keys. Everything else is an object whose tag key names its kind
(`{"$tuple": [...]}`). A new kind of value is one `Tag` subclass below (plus its schema entry).

Object graphs. A container (dict, OrderedDict, list, set, tuple, frozenset), a record or a module
reached more than once is written once: its first occurrence carries `"$id": N` (in tagged form, so a
shared list is `{"$list": [...], "$id": 0}`), every later one is `{"$ref": N}`. The decoder visits
nodes in the encoder's depth-first order, so a reference always points back to something already
decoded; output is linear in the number of distinct objects (a shared list is never expanded).
Mutable kinds (dict, OrderedDict, list, set, record) are registered *before* their items, so they
may contain themselves. Tuples, frozensets and modules are built from their items and registered
after them; a cycle that comes back to one of them while its items are being written is written
the way pickle writes it: the inner occurrence defines it, and the outer one is
`{"$ref": N, "$with": [items]}`, whose items are decoded only for the definitions they hold.
"""

from __future__ import annotations

import base64
import binascii
import collections
import itertools
import math
import struct
from collections.abc import Callable, Generator
from types import GeneratorType
from typing import Any, ClassVar

import numpy as np

from ..errors import MalformedCheckpoint, UnsupportedValue
from ..model.collisions import check_keys, grown
from ..model.limits import LIMITS
from ..model.paths import KEY, Field, format_path
from ..model.records import GlobalRef, ModuleRecord, NdArrayRef, NpDType, NpScalar, ObjectRecord, TensorRef, Unsupported
from ..model.torch_types import DTYPES_BY_NAME, Device, DType, TorchSize, dtype_name, parse_device
from ..primitives.explicit_stack import drive
from .deep import json_depth
from .schema import MAX_SIDECAR_BYTES


def _to_torch(value: Any) -> Any:
    """The loader's side of the reader's torch-free values (here, not at import: the writer needs no torch)."""
    from ..model.torch_values import to_torch

    return to_torch(value)


ENCODE_MAX_DEPTH = LIMITS.encode_depth
DECODE_MAX_DEPTH = LIMITS.decode_depth
MAX_NODES = LIMITS.sidecar_nodes

# Keys that may accompany a tag (they are not tags themselves).
MODIFIERS = ("$id", "$attrs", "$with")

Children = Generator[tuple[Any, int], Any, Any]  # decoding a container: yields (child, depth), gets it decoded
Items = Generator[tuple[Any, list, int], Any, Any]  # encoding a container: yields (child, path, depth), gets it encoded


# ------------------------------------------------------------------------------------------ registry

class Tag:
    """One kind of typed-JSON value. Subclasses set `name` (the tag key) and `types` (the Python types
    it encodes, matched exactly), and implement `encode` and `decode`; `describe` feeds `inspect`.

    `shared`: instances have identity (may be reached twice, get `$id`/`$ref`). `mutable`: created
    empty by `new`, registered, then filled by `fill` (so it may contain itself).

    Encoding is iterative (see Encoder.value): a shared tag's `encode` is a generator that yields
    `(child, path, depth)` for each value it holds, in order, and receives it encoded.
    Decoding is iterative (see Decoder.value): a tag whose payload holds values is decoded by a generator
    that yields `(child, depth)` for each of them, in the encoder's order, and receives it decoded."""

    name: ClassVar[str]
    types: ClassVar[tuple[type, ...]] = ()
    shared: ClassVar[bool] = False
    mutable: ClassVar[bool] = False

    def encode(self, enc: Encoder, v: Any, path: list, depth: int) -> Any:
        raise NotImplementedError

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        """The value (a scalar tag), or a generator of its children that returns it (see the class docstring)."""
        obj = self.new(node)
        dec.register(obj, node)
        yield from self.fill(dec, obj, node, depth)
        return obj

    def new(self, node: dict) -> Any:
        raise NotImplementedError

    def fill(self, dec: Decoder, obj: Any, node: dict, depth: int) -> Children:
        raise NotImplementedError

    def items(self, payload: Any) -> list[tuple[str, Any]] | None:
        """Children to show in `inspect` (containers), or None for a one-line value."""
        return None

    def describe(self, payload: Any, context: Any) -> str:
        return f"{self.name[1:]} {str(payload)[:80]}"


TAGS: dict[str, Tag] = {}
_BY_TYPE: dict[type, Tag] = {}


def register(cls: type[Tag]) -> type[Tag]:
    tag = cls()
    assert tag.name not in TAGS, tag.name
    TAGS[tag.name] = tag
    for t in cls.types:
        _BY_TYPE[t] = tag
    return cls


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(p: str) -> bytes:
    try:
        return base64.b64decode(p, validate=True)
    except binascii.Error:
        raise MalformedCheckpoint("sidecar holds invalid base64") from None


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        raise MalformedCheckpoint(f"sidecar uses an unhashable {type(key).__name__} as a key or set member") from None
    return key


# ------------------------------------------------------------------------------------------ containers

@register
class ListTag(Tag):
    """A list that needs an `$id` (a plain list is written as a JSON array)."""

    name, types, shared, mutable = "$list", (list,), True, True

    def encode(self, enc: Encoder, v: list, path: list, depth: int) -> Items:
        return (yield from _encode_items(enc, v, path, depth))

    def new(self, node: dict) -> list:
        return []

    def fill(self, dec: Decoder, obj: list, node: dict, depth: int) -> Children:
        for x in node[self.name]:
            obj.append((yield x, depth + 1))

    def items(self, payload: list) -> list:
        return list(enumerate(payload))


class _MappingTag(Tag):
    shared, mutable = True, True
    kind: ClassVar[type]

    def new(self, node: dict) -> Any:
        return self.kind()

    def fill(self, dec: Decoder, obj: dict, node: dict, depth: int) -> Children:
        d = depth + 1
        for key, value in node[self.name]:
            k = _hashable((yield key, d))  # the key first: the encoder's order ($id definitions)
            obj[k] = yield value, d
            grown(obj, f"sidecar {self.name}")

    def items(self, payload: list) -> list:
        return [(describe_short(k), x) for k, x in payload]


# Values `Encoder._open` encodes in place (never a generator): a container writes them without a trip
# through the stack's loop, which would cost more than the value itself.
_LEAVES = frozenset((type(None), bool, int, float, str))


def _encode_items(enc: Encoder, values: Any, path: list, depth: int) -> Items:
    out = []
    d = depth + 1
    for i, x in enumerate(values):
        out.append(enc._open(x, [*path, i], d) if type(x) in _LEAVES else (yield x, [*path, i], d))
    return out


def _encode_pairs(enc: Encoder, pairs: Any, path: list, depth: int) -> Items:
    out = []
    d = depth + 1
    for k, x in pairs:  # the key first: the decoder reads it first ($id definitions)
        key = enc._open(k, [*path, KEY], d) if type(k) in _LEAVES else (yield k, [*path, KEY], d)
        out.append([key, enc._open(x, [*path, k], d) if type(x) in _LEAVES else (yield x, [*path, k], d)])
    return out


@register
class DictTag(_MappingTag):
    """A dict; written as a plain JSON object when every key is a str not starting with "$" and it has no `$id`."""

    name, types, kind = "$dict", (dict,), dict

    def encode(self, enc: Encoder, v: dict, path: list, depth: int) -> Items:
        return (yield from _encode_pairs(enc, v.items(), path, depth))


@register
class OrderedDictTag(_MappingTag):
    """An OrderedDict, with its attributes (a state dict's `_metadata`) under `$attrs`."""

    name, types, kind = "$odict", (collections.OrderedDict,), collections.OrderedDict

    def encode(self, enc: Encoder, v: dict, path: list, depth: int) -> Items:
        return (yield from _encode_pairs(enc, v.items(), path, depth))

    def attrs(self, v: Any, path: list, depth: int) -> Items:
        out = {}
        for k, x in (getattr(v, "__dict__", None) or {}).items():
            out[k] = yield x, [*path, Field(k)], depth + 1
        return out or None

    def fill(self, dec: Decoder, obj: Any, node: dict, depth: int) -> Children:
        yield from super().fill(dec, obj, node, depth)
        for name, attr in node.get("$attrs", {}).items():
            if not name.isidentifier() or name.startswith("__"):
                raise MalformedCheckpoint(f"sidecar OrderedDict attribute {name!r:.40} is not allowed")
            obj.__dict__[name] = yield attr, depth + 1


class _ItemsTag(Tag):
    shared = True
    kind: ClassVar[type]

    def encode(self, enc: Encoder, v: Any, path: list, depth: int) -> Items:
        return (yield from _encode_items(enc, v, path, depth))

    def items(self, payload: list) -> list:
        return list(enumerate(payload))


@register
class TupleTag(_ItemsTag):
    name, types, kind = "$tuple", (tuple,), tuple

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        items = []
        for x in node[self.name]:
            items.append((yield x, depth + 1))
        return dec.register(tuple(items), node)


def _ordered_members(v: Any) -> list:
    """Set members in an order that does not depend on hash seeds or addresses (output is deterministic)."""
    return sorted(v, key=_member_key)


def _member_key(x: Any) -> tuple:
    kind = type(x)
    if kind in (tuple, frozenset):
        inner = [_member_key(y) for y in x]
        return (kind.__name__, sorted(inner) if kind is frozenset else inner)
    if kind is float:
        return ("float", struct.pack(">d", x).hex())
    if kind is ObjectRecord:
        return ("record", x.qualname, x.via)
    return (kind.__name__, repr(x))


@register
class SetTag(_ItemsTag):
    name, types, kind, mutable = "$set", (set,), set, True

    def encode(self, enc: Encoder, v: Any, path: list, depth: int) -> Items:
        return (yield from _encode_items(enc, _ordered_members(v), path, depth))

    def new(self, node: dict) -> set:
        return set()

    def fill(self, dec: Decoder, obj: set, node: dict, depth: int) -> Children:
        for x in node[self.name]:
            obj.add(_hashable((yield x, depth + 1)))
            grown(obj, "sidecar $set")


@register
class FrozensetTag(_ItemsTag):
    name, types, kind = "$frozenset", (frozenset,), frozenset

    def encode(self, enc: Encoder, v: Any, path: list, depth: int) -> Items:
        return (yield from _encode_items(enc, _ordered_members(v), path, depth))

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        items = []
        for x in node[self.name]:
            items.append(_hashable((yield x, depth + 1)))
        check_keys(items, "sidecar $frozenset")
        return dec.register(frozenset(items), node)


@register
class RefTag(Tag):
    """`{"$ref": N}`: the object defined earlier with `"$id": N` (see the module docstring for `$with`)."""

    name = "$ref"

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        for x in node.get("$with", ()):
            yield x, depth + 1  # only for the definitions inside
        return dec.lookup(node[self.name])

    def describe(self, payload: Any, context: Any) -> str:
        return f"→ the same object as #{payload}"


# ------------------------------------------------------------------------------------------ scalars

@register
class IntTag(Tag):
    """An int outside int64, as hex."""

    name = "$int"

    def decode(self, dec: Decoder, node: dict, depth: int) -> int:
        return int(node[self.name], 16)

    def describe(self, payload: str, context: Any) -> str:
        return str(int(payload, 16))


@register
class FloatTag(Tag):
    """A non-finite float, as its 8 big-endian bytes in hex (NaN payloads kept)."""

    name = "$float"

    def decode(self, dec: Decoder, node: dict, depth: int) -> float:
        return struct.unpack(">d", bytes.fromhex(node[self.name]))[0]

    def describe(self, payload: str, context: Any) -> str:
        return repr(struct.unpack(">d", bytes.fromhex(payload))[0])


@register
class ComplexTag(Tag):
    name, types = "$complex", (complex,)

    def encode(self, enc: Encoder, v: complex, path: list, depth: int) -> Any:
        return [enc.value(v.real, path, depth + 1), enc.value(v.imag, path, depth + 1)]

    def decode(self, dec: Decoder, node: dict, depth: int) -> complex:
        parts = []
        for x in node[self.name]:
            parts.append((yield x, depth + 1))
        re, im = parts
        if not all(type(x) in (int, float) for x in (re, im)):
            raise MalformedCheckpoint("sidecar complex parts must be numbers")
        return complex(re, im)


@register
class BytesTag(Tag):
    name, types = "$bytes", (bytes,)

    def encode(self, enc: Encoder, v: bytes, path: list, depth: int) -> Any:
        return _b64(v)

    def decode(self, dec: Decoder, node: dict, depth: int) -> bytes:
        return _unb64(node[self.name])

    def describe(self, payload: str, context: Any) -> str:
        return f"bytes ({len(payload) * 3 // 4} bytes)"


@register
class BytearrayTag(BytesTag):
    name, types = "$bytearray", (bytearray,)

    def encode(self, enc: Encoder, v: bytearray, path: list, depth: int) -> Any:
        return _b64(bytes(v))

    def decode(self, dec: Decoder, node: dict, depth: int) -> bytearray:
        return bytearray(_unb64(node[self.name]))

    def describe(self, payload: str, context: Any) -> str:
        return f"bytearray ({len(payload) * 3 // 4} bytes)"


@register
class NpScalarTag(Tag):
    name, types = "$npscalar", (NpScalar,)

    def encode(self, enc: Encoder, v: NpScalar, path: list, depth: int) -> Any:
        return {"dtype": v.dtype, "hex": v.data.hex()}

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        p = node[self.name]
        dtype = np.dtype(p["dtype"])
        raw = bytes.fromhex(p["hex"])
        if len(raw) != dtype.itemsize:
            raise MalformedCheckpoint("sidecar numpy scalar has the wrong number of bytes")
        return np.frombuffer(raw, dtype=dtype)[0]

    def describe(self, payload: dict, context: Any) -> str:
        return f"numpy scalar {payload['dtype']} 0x{payload['hex']}"


@register
class NpDTypeTag(Tag):
    name, types = "$npdtype", (NpDType,)

    def encode(self, enc: Encoder, v: NpDType, path: list, depth: int) -> Any:
        return v.str

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        return np.dtype(node[self.name])


@register
class DTypeTag(Tag):
    name, types = "$dtype", (DType,)

    def encode(self, enc: Encoder, v: DType, path: list, depth: int) -> Any:
        return dtype_name(v)

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        return _to_torch(DTYPES_BY_NAME[node[self.name]])


@register
class SizeTag(Tag):
    name, types = "$size", (TorchSize,)

    def encode(self, enc: Encoder, v: TorchSize, path: list, depth: int) -> Any:
        return list(v)

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        return _to_torch(TorchSize(node[self.name]))

    def describe(self, payload: list, context: Any) -> str:
        return f"torch.Size({payload})"


@register
class DeviceTag(Tag):
    name, types = "$device", (Device,)

    def encode(self, enc: Encoder, v: Device, path: list, depth: int) -> Any:
        return str(v)

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        try:
            device = parse_device(node[self.name])
        except ValueError as exc:
            raise MalformedCheckpoint(f"$device: {exc}") from None
        return _to_torch(device)


@register
class GlobalTag(Tag):
    """A class or function the pickle named (never imported)."""

    name, types = "$global", (GlobalRef,)

    def encode(self, enc: Encoder, v: GlobalRef, path: list, depth: int) -> Any:
        return v.qualname

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        module, _, name = node[self.name].rpartition(".")
        return GlobalRef(module, name)


# ------------------------------------------------------------------------------------------ references

@register
class TensorTag(Tag):
    """A tensor: its id in the sidecar's `tensors` table (the writer's planner places its bytes)."""

    name, types = "$tensor", (TensorRef,)

    def encode(self, enc: Encoder, v: TensorRef, path: list, depth: int) -> Any:
        return enc.hooks.tensor_ref(v, path)

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        return dec.tensor(node[self.name])

    def describe(self, payload: str, context: Any) -> str:
        return context.tensor_line(payload)


@register
class NdArrayTag(Tag):
    name, types = "$ndarray", (NdArrayRef,)

    def encode(self, enc: Encoder, v: NdArrayRef, path: list, depth: int) -> Any:
        return enc.hooks.array_ref(v, path)

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        return dec.array(node[self.name])

    def describe(self, payload: str, context: Any) -> str:
        a = context.sidecar["arrays"].get(payload)
        if a is None:  # a plain array: no row, the safetensors header has its dtype and shape
            return context.plain_line("ndarray", payload)
        return f"ndarray {a['dtype']} {a['shape']}"


@register
class ObjectTag(Tag):
    """An inert record of an object of a class the converter does not construct."""

    name, types, shared, mutable = "$object", (ObjectRecord,), True, True

    def encode(self, enc: Encoder, v: ObjectRecord, path: list, depth: int) -> Items:
        d = depth + 1
        out: dict[str, Any] = {"class": v.qualname, "via": v.via}
        out["args"] = yield v.args if type(v.args) is tuple else tuple(v.args), [*path, Field("args")], d
        if v.state is not None:
            out["state"] = yield v.state, [*path, Field("state")], d
        if v.dictitems:
            out["dictitems"] = yield from _encode_pairs(enc, v.dictitems, path, depth)
        if v.listitems:
            out["listitems"] = yield from _encode_items(enc, v.listitems, path, depth)
        return out

    def new(self, node: dict) -> ObjectRecord:
        p = node[self.name]
        return ObjectRecord(p["class"], via=p["via"])

    def fill(self, dec: Decoder, obj: ObjectRecord, node: dict, depth: int) -> Children:
        p, d = node[self.name], depth + 1
        args = yield p["args"], d
        obj.args = args if isinstance(args, tuple) else (args,)
        obj.state = yield p.get("state"), d
        obj.dictitems = []
        for k, x in p.get("dictitems", []):
            key = yield k, d
            obj.dictitems.append((key, (yield x, d)))
        obj.listitems = []
        for x in p.get("listitems", []):
            obj.listitems.append((yield x, d))

    def describe(self, payload: dict, context: Any) -> str:
        if payload.get("via") == "getattr":  # getattr(Class, "name") in the pickle: never looked up
            return f"attribute reference {payload['class']} (inert)"
        if payload.get("via") == "salvaged-call":
            return f"salvaged call of {payload['class']} (not run)"
        return f"inert record of {payload['class']}"


@register
class ModuleTag(Tag):
    """An nn.Module, given back as its state_dict; `index` points into the sidecar's `modules` list."""

    name, types, shared = "$module", (ModuleRecord,), True

    def encode(self, enc: Encoder, v: ModuleRecord, path: list, depth: int) -> Any:
        return enc.hooks.module_ref(v, path, depth)

    def decode(self, dec: Decoder, node: dict, depth: int) -> Any:
        return dec.register((yield node[self.name]["state_dict"], depth + 1), node)

    def describe(self, payload: dict, context: Any) -> str:
        return f"module {context.sidecar['modules'][payload['index']]['class']} → state_dict"


# ------------------------------------------------------------------------------------------ encoder

class EncodeHooks:
    """What the encoder asks its owner (the writer's planner): where tensors, arrays and modules go."""

    def tensor_ref(self, ref: TensorRef, path: list) -> Any:
        """The tensor's id in the sidecar, or a generator that yields values to encode and returns it."""
        raise UnsupportedValue(f"{format_path(path)}: a tensor cannot be stored here")

    def array_ref(self, ref: NdArrayRef, path: list) -> Any:
        raise UnsupportedValue(f"{format_path(path)}: a numpy array cannot be stored here")

    def module_ref(self, ref: ModuleRecord, path: list, depth: int) -> Any:
        raise UnsupportedValue(f"{format_path(path)}: an nn.Module cannot be stored here")


def _children(v: Any) -> Any:
    """The values `v` holds that the encoder visits (for counting references; order does not matter)."""
    kind = type(v)
    if kind is dict or kind is collections.OrderedDict:
        if kind is collections.OrderedDict and getattr(v, "__dict__", None):
            return itertools.chain(v.keys(), v.values(), v.__dict__.values())
        return itertools.chain(v.keys(), v.values())
    if kind is ObjectRecord:
        return itertools.chain((v.args, v.state), itertools.chain.from_iterable(v.dictitems), v.listitems)
    if kind is ModuleRecord:
        return (v.state_dict,)
    if kind is TensorRef:
        return v.attrs.values()
    return v  # list, tuple, set, frozenset


_WALKED = frozenset((dict, collections.OrderedDict, list, tuple, set, frozenset, ObjectRecord, ModuleRecord, TensorRef))


class Encoder:
    """Python values (as the reader builds them) → typed JSON, one graph per encoder.

    Call `count(root)` first: it finds the values reached more than once (shared or cyclic), which get
    an `$id`. `value(v, path, depth)` then encodes; `node(v, path, depth, payload=...)` lets the planner
    supply a node's encoded contents itself (state dicts whose tensors go to their own file).
    """

    def __init__(self, hooks: EncodeHooks | None = None, max_nodes: int = MAX_NODES,
                 max_bytes: int = MAX_SIDECAR_BYTES) -> None:
        self.hooks = hooks or EncodeHooks()
        self.max_nodes = max_nodes
        self.nodes = 0
        # A lower bound of the JSON written so far, counted before each string, bytes or big int is written:
        # strings (immutable, unshared in JSON) reached many times would otherwise make the sidecar a multiple
        # of the input (one 1 MB string referenced 4000 times: 4 GB), and only the final size check would see it.
        self.max_bytes = max_bytes
        self.bytes = 0
        self.refs: dict[int, int] = {}  # id → number of references, for shareable values
        self.ids: dict[int, int] = {}  # id → $id, once defined
        self.open: dict[int, int] = {}  # containers being written (a tuple re-entered by a cycle: twice)
        self.open_mutable: set[int] = set()
        self.reentered: set[int] = set()
        self._keep: list[Any] = []  # ids are only stable while the objects live

    def count(self, root: Any) -> None:
        """Count references to every container, record and module reachable from `root` (iteratively)."""
        if type(root) not in _WALKED:
            return
        refs = self.refs
        stack = [root]
        refs[id(root)] = refs.get(id(root), 0) + 1
        seen: set[int] = {id(root)}
        self._keep.append(root)
        while stack:
            for child in _children(stack.pop()):
                kind = type(child)
                if kind not in _WALKED or ((kind is tuple or kind is frozenset) and not child):
                    continue  # () and frozenset() are singletons: no identity to keep
                key = id(child)
                if kind is TensorRef:
                    if not child.attrs:
                        continue
                else:
                    refs[key] = refs.get(key, 0) + 1
                if key not in seen:
                    seen.add(key)
                    self._keep.append(child)
                    stack.append(child)

    def value(self, v: Any, path: list, depth: int) -> Any:
        """`v` encoded at `depth` (its level below the graph's root), iteratively (see `run`)."""
        return self.run(self._open(v, path, depth))

    def run(self, top: Any) -> Any:
        """Drive an explicit stack of the containers being written, at most ENCODE_MAX_DEPTH deep, from `top`:
        each is a generator (`_node`, or a hook's, such as a tensor's for its attributes) that yields
        `(child, path, depth)` and receives it encoded, in order. A hook that returns a whole value (a
        module's entry, a state dict's pairs) may call `value` again: one more, shallow, stack."""
        return drive(top, self._open)  # on an error, each open level's bookkeeping unwinds as recursion would

    def _open(self, v: Any, path: list, depth: int) -> Any:
        """A leaf encoded, or the generator that encodes a container (see `run`)."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise MalformedCheckpoint(f"checkpoint has more than {self.max_nodes} values; refusing")
        if depth > ENCODE_MAX_DEPTH:
            raise MalformedCheckpoint(f"{format_path(path)}: checkpoint nests deeper than {ENCODE_MAX_DEPTH} levels")
        kind = type(v)
        if v is None or kind is bool:
            return v
        if kind is str:
            self.add_bytes(len(v) + 3, path)
            return v
        if kind is int:
            if -(1 << 63) <= v < (1 << 63):
                return v
            self.add_bytes(v.bit_length() // 4 + 12, path)  # before hex() allocates it
            return {"$int": hex(v)}
        if kind is bytes or kind is bytearray:
            self.add_bytes(len(v) * 4 // 3 + 16, path)  # before base64 allocates it
        if kind is float:
            return v if math.isfinite(v) else {"$float": struct.pack(">d", v).hex()}
        tag = _BY_TYPE.get(kind)
        if tag is None:
            if kind is Unsupported:
                raise UnsupportedValue(f"{format_path(path)}: {v.reason}")
            raise UnsupportedValue(f"{format_path(path)}: a {kind.__module__}.{kind.__qualname__}, which cannot be stored")
        if tag.shared:
            return self._node(v, path, depth, None)
        encoded = tag.encode(self, v, path, depth)
        if type(encoded) is GeneratorType:  # a tensor whose attributes hold values: the hook yields them
            return _tagged(tag.name, encoded)
        return {tag.name: encoded}

    def add_bytes(self, n: int, path: list) -> None:
        """Count `n` more bytes of JSON; UnsupportedValue as soon as the sidecar cannot fit its largest allowance."""
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise UnsupportedValue(f"{format_path(path)}: the non-tensor values would make a sidecar of more than "
                                   f"{self.max_bytes} bytes (the same large value referenced many times?); refusing")

    def node(self, v: Any, path: list, depth: int, payload: Callable[[], Any] | None = None) -> Any:
        """A container, record or module: a `$ref` if already written, else its definition (with `$id`
        when it is reached more than once). `payload` supplies the encoded contents (a mapping's pairs,
        a module's entry) in place of the tag's own `encode`."""
        return self.run(self._node(v, path, depth, payload))

    def _node(self, v: Any, path: list, depth: int, payload: Callable[[], Any] | None) -> Items:
        key = id(v)
        found = self.ids.get(key)
        if found is not None:
            return {"$ref": found}
        if key in self.open:
            if key in self.open_mutable:  # a cycle re-entered through a tuple reaches it: it needs an id now
                return {"$ref": self._new_id(v)}
            self.reentered.add(key)  # a tuple (or module) met again while its items are written: define it here
        tag = _BY_TYPE[type(v)]
        if self.refs.get(key, 1) > 1 and tag.mutable:
            self._new_id(v)
        self.open[key] = self.open.get(key, 0) + 1
        if tag.mutable:
            self.open_mutable.add(key)
        try:
            if payload is not None:
                encoded = payload()
            elif tag is TUPLE or tag is FROZENSET:
                encoded = []
                for i, x in enumerate(v if tag is TUPLE else _ordered_members(v)):
                    encoded.append(self._open(x, [*path, i], depth + 1) if type(x) in _LEAVES
                                   else (yield x, [*path, i], depth + 1))
                    if key in self.ids:  # defined while its items were written: a cycle came back through it
                        return {"$ref": self.ids[key], "$with": encoded}
            else:
                encoded = tag.encode(self, v, path, depth)
                if type(encoded) is GeneratorType:  # a module's entry comes back from the hook whole
                    encoded = yield from encoded
            attrs = (yield from ODICT.attrs(v, path, depth)) if tag is ODICT else None
        finally:
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]
                self.open_mutable.discard(key)
        if not tag.mutable:
            if key in self.ids:
                return {"$ref": self.ids[key], "$with": _with_items(tag, encoded)}
            if self.refs.get(key, 1) > 1 or key in self.reentered:
                self._new_id(v)
        found = self.ids.get(key)
        shared = found is not None
        if tag is DICT and not shared and all(type(k) is str and not k.startswith("$") for k, _ in encoded):
            return {k: x for k, x in encoded}
        if tag is LIST and not shared:
            return encoded
        out = {tag.name: encoded}
        if attrs:
            out["$attrs"] = attrs
        if shared:
            out["$id"] = found
        return out

    def _new_id(self, v: Any) -> int:
        n = self.ids[id(v)] = len(self.ids)
        self._keep.append(v)
        return n


def _tagged(name: str, encoded: Items) -> Items:
    return {name: (yield from encoded)}


def _with_items(tag: Tag, payload: Any) -> list:
    return [payload["state_dict"]] if tag is MODULE else payload


DICT, ODICT, LIST, MODULE = TAGS["$dict"], TAGS["$odict"], TAGS["$list"], TAGS["$module"]
TUPLE, FROZENSET = TAGS["$tuple"], TAGS["$frozenset"]


# ------------------------------------------------------------------------------------------ decoder

_MISSING = object()
_SCALARS = frozenset((type(None), bool, int, float, str))  # exactly what JSON parses to: decoded as they are


def _no_tensor(tid: str) -> Any:
    raise MalformedCheckpoint(f"sidecar refers to tensor {tid!r:.20} where none can be")


class Decoder:
    """Typed JSON → Python values; tensors and arrays are resolved by the callables given (the loader).

    One decoder per graph: each `$id` is defined once, and a `$ref` may only point back to one."""

    def __init__(self, tensor: Callable[[str], Any] = _no_tensor, array: Callable[[str], Any] = _no_tensor) -> None:
        self.tensor = tensor
        self.array = array
        self.objects: dict[int, Any] = {}

    def register(self, obj: Any, node: dict) -> Any:
        n = node.get("$id")
        if n is not None:
            if type(n) is not int or n in self.objects:
                raise MalformedCheckpoint(f"sidecar defines $id {n!r:.20} twice")
            self.objects[n] = obj
        return obj

    def lookup(self, n: Any) -> Any:
        found = self.objects.get(n, _MISSING) if type(n) is int else _MISSING
        if found is _MISSING:
            raise MalformedCheckpoint(f"sidecar $ref {n!r:.20} points to nothing defined before it")
        return found

    def value(self, v: Any, depth: int = 0) -> Any:
        """`v` decoded, iteratively: an explicit stack of the containers being filled, at most DECODE_MAX_DEPTH
        deep (each one a generator that yields its children and receives them decoded, in order)."""
        try:
            return drive(self._open(v, depth), self._open)
        except RecursionError:  # only through a callback that decodes by calling `value` (the loader's yield instead)
            raise MalformedCheckpoint("sidecar nests too deeply") from None

    def _open(self, v: Any, depth: int) -> Any:
        """A scalar decoded, or the generator that decodes a container (see `value`)."""
        if depth > DECODE_MAX_DEPTH:
            raise MalformedCheckpoint("sidecar nests too deeply")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return self._list(v, depth + 1)
        if not isinstance(v, dict):
            raise MalformedCheckpoint(f"sidecar holds an unexpected {type(v).__name__}")
        tag = tag_of(v)
        if tag is None:
            return self._dict(v, depth + 1)
        return tag.decode(self, v, depth)

    @staticmethod
    def _list(v: list, depth: int) -> Children:
        out = []
        for x in v:
            out.append(x if type(x) in _SCALARS and depth <= DECODE_MAX_DEPTH else (yield x, depth))
        return out

    @staticmethod
    def _dict(v: dict, depth: int) -> Children:
        out = {}
        for k, x in v.items():
            out[k] = x if type(x) in _SCALARS and depth <= DECODE_MAX_DEPTH else (yield x, depth)
        return out


def tag_of(node: dict) -> Tag | None:
    """The tag of a typed-JSON object, None for a plain object; malformed if it has `$` keys but no known tag."""
    found = None
    for key in node:
        if key.startswith("$"):
            tag = TAGS.get(key)
            if tag is not None:
                found = tag
            elif key not in MODIFIERS:
                raise MalformedCheckpoint(f"sidecar uses unknown tag {key!r:.20}")
    if found is None and any(k.startswith("$") for k in node):
        raise MalformedCheckpoint("sidecar object has modifiers but no tag")
    return found


def describe_short(v: Any) -> str:
    """One line for a dict key or leaf in `inspect`."""
    if isinstance(v, dict):
        tag = tag_of(v)
        if tag is not None and tag.items(v[tag.name]) is None and tag.name not in ("$tensor", "$ndarray", "$module"):
            return tag.describe(v[tag.name], None)
    if json_depth(v, _SHORT_DEPTH) > _SHORT_DEPTH:  # repr recurses per level: a deep key would raise RecursionError
        return f"<a key nested deeper than {_SHORT_DEPTH} levels>"
    return repr(v)[:100]


_SHORT_DEPTH = 20
