"""Equivalence of two checkpoint graphs, as strictly as a resumed training run needs it.

Graph shape counts: a container or record reached twice in one graph must be reached twice (the
same object) at the same places in the other, and cycles must close at the same places; each pair
of nodes is compared once, so cycles end the walk instead of recursing forever.

Checks exact types (dict vs OrderedDict, tuple vs list, int vs bool, Tensor vs Parameter), key
order and key types, floats bit for bit, tensor dtype/shape/stride/offset/storage size/
requires_grad/bits, aliasing (tensors that share storage in one tree share it in the other, at
the same offsets), `_metadata` and other OrderedDict attributes, numpy dtype/byte order/layout.
"""

from __future__ import annotations

import collections
import math
import struct
from typing import Any

import numpy as np
import torch

from ..model.records import GlobalRef, ObjectRecord

MAX_DIFFS = 50
_NODES = (dict, collections.OrderedDict, list, tuple, set, frozenset, ObjectRecord)


class _Comparer:
    def __init__(self) -> None:
        self.diffs: list[str] = []
        self.a_to_b: dict[int, int] = {}
        self.b_to_a: dict[int, int] = {}
        self.nodes_a_to_b: dict[int, int] = {}  # containers and records already paired
        self.nodes_b_to_a: dict[int, int] = {}
        self.keep: list[Any] = []  # ids are only stable while the objects live
        # pairs still to compare, the next one last: depth first without recursion (a loadable sidecar nests
        # up to LIMITS.decode_depth levels, beyond the interpreter's recursion limit)
        self.todo: list[tuple[Any, Any, str]] = []

    def run(self, a: Any, b: Any) -> None:
        self.todo.append((a, b, ""))
        while self.todo:
            self.compare(*self.todo.pop())

    def later(self, pairs: list[tuple[Any, Any, str]]) -> None:
        """Compare `pairs` next, in their order (before anything queued earlier)."""
        self.todo.extend(reversed(pairs))

    def diff(self, path: str, message: str) -> None:
        if len(self.diffs) < MAX_DIFFS:
            self.diffs.append(f"{path or '<root>'}: {message}")

    def compare(self, a: Any, b: Any, path: str) -> None:
        if type(a) is not type(b):
            self.diff(path, f"type {type(a).__name__} != {type(b).__name__}")
            return
        if type(a) in _NODES and (len(a) if type(a) in (tuple, frozenset) else 1) and not self.pair(a, b, path):
            return
        if isinstance(a, torch.Tensor):
            self.tensor(a, b, path)
        elif isinstance(a, np.ndarray):
            if a.dtype.str != b.dtype.str or a.shape != b.shape:
                self.diff(path, f"ndarray {a.dtype.str}{list(a.shape)} != {b.dtype.str}{list(b.shape)}")
            elif a.flags.f_contiguous != b.flags.f_contiguous or a.flags.c_contiguous != b.flags.c_contiguous:
                self.diff(path, "ndarray memory order differs")
            elif a.tobytes() != b.tobytes():
                self.diff(path, "ndarray contents differ")
        elif isinstance(a, np.generic):
            if a.dtype.str != b.dtype.str or a.tobytes() != b.tobytes():
                self.diff(path, f"numpy scalar {a!r} != {b!r}")
        elif type(a) is float:
            if struct.pack(">d", a) != struct.pack(">d", b):
                self.diff(path, f"float {a!r} != {b!r}" + (" (bits differ)" if math.isnan(a) else ""))
        elif type(a) is complex:
            self.later([(a.real, b.real, path + ".real"), (a.imag, b.imag, path + ".imag")])
        elif type(a) in (dict, collections.OrderedDict):
            self.mapping(a, b, path)
        elif type(a) in (list, tuple, torch.Size):
            if len(a) != len(b):
                self.diff(path, f"length {len(a)} != {len(b)}")
                return
            self.later([(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))])
        elif type(a) in (set, frozenset):
            if a != b or sorted(map(repr, a)) != sorted(map(repr, b)):
                self.diff(path, f"set {sorted(map(repr, a))[:5]} != {sorted(map(repr, b))[:5]}")
        elif isinstance(a, ObjectRecord):
            if a.qualname != b.qualname:
                self.diff(path, f"record of {a.qualname} != {b.qualname}")
            self.later([(a.args, b.args, path + ".args"), (a.state, b.state, path + ".state"),
                        (list(map(list, a.dictitems)), list(map(list, b.dictitems)), path + ".dictitems"),
                        (a.listitems, b.listitems, path + ".listitems")])
        elif isinstance(a, GlobalRef):
            if a.qualname != b.qualname:
                self.diff(path, f"global {a.qualname} != {b.qualname}")
        elif a != b:
            self.diff(path, f"{a!r:.80} != {b!r:.80}")

    def pair(self, a: Any, b: Any, path: str) -> bool:
        """True if `a` and `b` are met for the first time (compare their contents now)."""
        ia, ib = id(a), id(b)
        seen_a, seen_b = self.nodes_a_to_b.get(ia), self.nodes_b_to_a.get(ib)
        if seen_a is None and seen_b is None:
            self.nodes_a_to_b[ia], self.nodes_b_to_a[ib] = ib, ia
            self.keep += (a, b)
            return True
        if seen_a != ib or seen_b != ia:
            where = "both sides, as different objects" if seen_a is not None and seen_b is not None else "one side only"
            self.diff(path, f"object sharing differs: this {type(a).__name__} was met before on {where} "
                            "(shared or cyclic values are not shared the same way)")
        return False

    def mapping(self, a: dict, b: dict, path: str) -> None:
        ka, kb = list(a), list(b)
        if len(ka) != len(kb) or any(type(x) is not type(y) or x != y for x, y in zip(ka, kb)):
            missing = [k for k in ka if k not in b][:5]
            extra = [k for k in kb if k not in a][:5]
            detail = f"missing {missing}, extra {extra}" if missing or extra else "same keys, different order or key types"
            self.diff(path, f"keys differ: {detail}")
            return
        pairs = [(a[key], b[key], f"{path}.{key}" if path else str(key)) for key in ka]
        attrs_a, attrs_b = getattr(a, "__dict__", {}), getattr(b, "__dict__", {})
        if list(attrs_a) != list(attrs_b):
            self.diff(path, f"attributes {list(attrs_a)} != {list(attrs_b)}")
        pairs += [(attrs_a[name], attrs_b[name], f"{path}.<{name}>") for name in attrs_a if name in attrs_b]
        self.later(pairs)

    def tensor(self, a: torch.Tensor, b: torch.Tensor, path: str) -> None:
        checks = [("dtype", a.dtype, b.dtype), ("shape", tuple(a.shape), tuple(b.shape)),
                  ("stride", a.stride(), b.stride()), ("storage_offset", a.storage_offset(), b.storage_offset()),
                  ("storage bytes", a.untyped_storage().nbytes(), b.untyped_storage().nbytes()),
                  ("requires_grad", a.requires_grad, b.requires_grad),
                  ("conj", a.is_conj(), b.is_conj()), ("neg", a.is_neg(), b.is_neg())]
        for name, x, y in checks:
            if x != y:
                self.diff(path, f"tensor {name} {x} != {y}")
                return
        if not _same_bits(a, b):
            self.diff(path, "tensor contents differ (bitwise)")
        self.alias(a, b, path)
        if a.__dict__ or b.__dict__:
            self.mapping(dict(a.__dict__), dict(b.__dict__), path + ".<attrs>")

    def alias(self, a: torch.Tensor, b: torch.Tensor, path: str) -> None:
        pa, pb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
        if a.untyped_storage().nbytes() == 0:
            return
        if self.a_to_b.setdefault(pa, pb) != pb or self.b_to_a.setdefault(pb, pa) != pa:
            self.diff(path, "storage sharing differs (tied or aliased tensors are not tied the same way)")


CHUNK_BYTES = 64 << 20  # compared a slice of rows at a time: a copy of each side's slice, never of a whole tensor


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors of one dtype and shape, in slices along the first dimension (a 256 MiB
    tensor made `verify SRC DST` peak at five times its size: two whole copies beside the two originals)."""
    if a.dim() == 0 or a.shape[0] <= 1 or a.numel() * a.element_size() <= CHUNK_BYTES:
        return torch.equal(_bits(a), _bits(b))
    step = max(1, CHUNK_BYTES // max(1, a[0].numel() * a.element_size()))
    return all(torch.equal(_bits(a[i:i + step]), _bits(b[i:i + step])) for i in range(0, a.shape[0], step))


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().resolve_conj().resolve_neg()
    if not t.numel():
        return torch.empty(0, dtype=torch.uint8)
    # a fresh row-major copy: `contiguous()` keeps a one-element view's stride (e.g. 2), which `view` refuses
    return torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1).view(torch.uint8)


def compare_trees(a: Any, b: Any) -> list[str]:
    """Differences between two checkpoint graphs (trees, shared values, cycles); empty means equivalent.

    Example:
        >>> compare_trees({"lr": 0.1}, {"lr": 0.1})
        []
    """
    comparer = _Comparer()
    comparer.run(a, b)
    return comparer.diffs
