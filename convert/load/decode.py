"""Typed JSON (the sidecar's `root`) → Python values, tensors and arrays resolved by the loader."""

from __future__ import annotations

import base64
import binascii
import collections
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import MalformedCheckpoint
from ..read.allowlist import make_device
from ..read.records import GlobalRef, ObjectRecord
from ..read.torch_types import DTYPES_BY_NAME
from ..torch_values import to_torch

MAX_DEPTH = 500


class Decoder:
    """`tensor(tid)` and `array(aid)` are supplied by the loader; everything else is pure data."""

    def __init__(self, tensor: Callable[[str], Any], array: Callable[[str], Any]) -> None:
        self.tensor = tensor
        self.array = array

    def value(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise MalformedCheckpoint("sidecar nests too deeply")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(x, depth + 1) for x in v]
        if not isinstance(v, dict):
            raise MalformedCheckpoint(f"sidecar holds an unexpected {type(v).__name__}")
        tag = next((k for k in v if k.startswith("$")), None)
        if tag is None:
            return {k: self.value(x, depth + 1) for k, x in v.items()}
        p = v[tag]
        d = depth + 1
        if tag == "$tuple":
            return tuple(self.value(x, d) for x in p)
        if tag == "$dict":
            return self._pairs(dict, p, d)
        if tag == "$odict":
            out = self._pairs(collections.OrderedDict, p, d)
            for name, attr in v.get("$attrs", {}).items():
                if not name.isidentifier() or name.startswith("__"):
                    raise MalformedCheckpoint(f"sidecar OrderedDict attribute {name!r:.40} is not allowed")
                out.__dict__[name] = self.value(attr, d)
            return out
        if tag == "$set":
            return set(self._hashable(self.value(x, d)) for x in p)
        if tag == "$frozenset":
            return frozenset(self._hashable(self.value(x, d)) for x in p)
        if tag == "$int":
            return int(p, 16)
        if tag == "$float":
            return struct.unpack(">d", bytes.fromhex(p))[0]
        if tag == "$complex":
            re, im = (self.value(x, d) for x in p)
            if not all(type(x) in (int, float) for x in (re, im)):
                raise MalformedCheckpoint("sidecar complex parts must be numbers")
            return complex(re, im)
        if tag in ("$bytes", "$bytearray"):
            try:
                raw = base64.b64decode(p, validate=True)
            except binascii.Error:
                raise MalformedCheckpoint("sidecar holds invalid base64") from None
            return raw if tag == "$bytes" else bytearray(raw)
        if tag == "$tensor":
            return self.tensor(p)
        if tag == "$ndarray":
            return self.array(p)
        if tag == "$npscalar":
            dtype = np.dtype(p["dtype"])
            raw = bytes.fromhex(p["hex"])
            if len(raw) != dtype.itemsize:
                raise MalformedCheckpoint("sidecar numpy scalar has the wrong number of bytes")
            return np.frombuffer(raw, dtype=dtype)[0]
        if tag == "$npdtype":
            return np.dtype(p)
        if tag == "$dtype":
            return to_torch(DTYPES_BY_NAME[p])
        if tag == "$size":
            return torch.Size(p)
        if tag == "$device":
            return to_torch(make_device(p))
        if tag == "$global":
            module, _, name = p.rpartition(".")
            return GlobalRef(module, name)
        if tag == "$object":
            return ObjectRecord(p["class"], args=self._tuple(self.value(p["args"], d)), state=self.value(p.get("state"), d),
                                dictitems=[(self.value(k, d), self.value(x, d)) for k, x in p.get("dictitems", [])],
                                listitems=[self.value(x, d) for x in p.get("listitems", [])], via=p["via"])
        if tag == "$module":
            return self.value(p["state_dict"], d)
        raise MalformedCheckpoint(f"sidecar uses unknown tag {tag!r:.20}")

    def _pairs(self, kind: type, pairs: list, depth: int) -> Any:
        out = kind()
        for key, value in pairs:
            out[self._hashable(self.value(key, depth))] = self.value(value, depth)
        return out

    @staticmethod
    def _hashable(key: Any) -> Any:
        try:
            hash(key)
        except TypeError:
            raise MalformedCheckpoint(f"sidecar uses an unhashable {type(key).__name__} as a key or set member") from None
        return key

    @staticmethod
    def _tuple(value: Any) -> tuple:
        return value if isinstance(value, tuple) else (value,)
