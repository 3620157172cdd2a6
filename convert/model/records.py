"""Inert values the reader produces in place of anything it will not construct.

Nothing here is ever called on behalf of the input file: these are plain data holders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..primitives.source import SourceBytes


@dataclass(eq=False)
class GlobalRef:
    """A `module.name` the pickle referred to. Never imported."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


@dataclass(eq=False)
class ObjectRecord:
    """An object of a class the converter does not construct, kept as inert data.

    `qualname` is the class (or callable) path, `args` what it would have been called with,
    `state` what `__setstate__`/`__dict__` would have received, `dictitems`/`listitems` the
    items a dict or list subclass would have held.
    """

    qualname: str
    args: tuple = ()
    state: Any = None
    dictitems: list = field(default_factory=list)
    listitems: list = field(default_factory=list)
    via: str = "reduce"

    def __repr__(self) -> str:
        return f"ObjectRecord({self.qualname!r})"

    def map(self, fn: Callable[[Any], Any]) -> ObjectRecord:
        """A copy with `fn` applied to everything the record holds (args, state, items)."""
        return ObjectRecord(self.qualname, fn(self.args), fn(self.state), [(fn(k), fn(v)) for k, v in self.dictitems],
                            [fn(v) for v in self.listitems], self.via)


@dataclass(eq=False)
class StorageRef:
    """A typed storage inside the container: where its bytes are and what they hold.

    Its bytes are `buffer[offset:offset + nbytes]`; `buffer` is the input file (a `SourceBytes`,
    read with pread) or, for a compressed zip member, the decompressed bytes. The container fills these in once it has
    checked them against the real file.
    """

    key: str
    dtype: Any  # torch.dtype
    nbytes: int
    location: str
    buffer: Any = field(default=None, repr=False)
    offset: int = 0
    # Pre-1.0 legacy files: a storage that is a window of `base`, starting `base_offset` elements in.
    base: StorageRef | None = None
    base_offset: int = 0
    # A storage whose bytes are not in one place (a tensor reassembled from DCP chunks): `pieces()`
    # yields them in order, a bounded piece at a time; `buffer` is then None.
    pieces: Callable[[], Iterator[Any]] | None = field(default=None, repr=False)

    def data(self) -> memoryview:
        """The storage's bytes: zero-copy from an in-memory buffer, or read (pread) from an input file.

        Release the view (`with`) before the input is closed.

        A storage made of `pieces` is assembled into memory here (the writer streams them instead).
        """
        if self.buffer is None and self.pieces is not None:
            out = bytearray(self.nbytes)
            at = 0
            for piece in self.pieces():
                n = len(piece)
                out[at:at + n] = piece
                at += n
            if at != self.nbytes:
                raise ValueError(f"storage {self.key!r}: pieces hold {at} bytes, expected {self.nbytes}")
            return memoryview(out)
        if self.buffer is None:
            raise ValueError(f"storage {self.key!r} has no data")
        if isinstance(self.buffer, SourceBytes):  # the input file: read now, never through a mapping (SIGBUS)
            return memoryview(self.buffer.read(self.offset, self.nbytes))
        to_host = getattr(self.buffer, "to_host", None)
        if to_host is not None:  # a live device storage (save_checkpoint, write/chunked.py): copied for a gather
            return to_host(self.offset, self.nbytes)
        return memoryview(self.buffer)[self.offset:self.offset + self.nbytes]


@dataclass(eq=False)
class TensorRef:
    """A tensor the file describes: a strided view of a storage, not yet materialised."""

    storage: StorageRef
    dtype: Any  # torch.dtype
    offset: int
    shape: tuple
    stride: tuple
    requires_grad: bool = False
    is_parameter: bool = False
    conj: bool = False
    neg: bool = False
    attrs: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(eq=False)
class NdArrayRef:
    """A numpy array from the pickle: dtype string (with byte order), shape, order and raw bytes."""

    dtype: str  # numpy dtype.str, e.g. "<f4", "|b1"
    shape: tuple
    fortran: bool
    data: Any = field(repr=False)  # bytes-like, exactly prod(shape) * itemsize


@dataclass(eq=False)
class NpDType:
    """A numpy dtype value (numeric kinds only)."""

    str: str


@dataclass(eq=False)
class NpScalar:
    """A numpy scalar: dtype string and its raw bytes."""

    dtype: str
    data: bytes


@dataclass(eq=False)
class Unsupported:
    """A well-formed value with no lossless encoding (quantized, sparse, ...). Reported with its
    tree path when the converter reaches it, so the error names the key."""

    reason: str


@dataclass(eq=False)
class ModuleRecord:
    """An nn.Module found in the pickle, turned into what `module.state_dict()` returns."""

    qualname: str
    state_dict: Any  # OrderedDict with _metadata
    tree: dict  # {"class": ..., "training": ..., "attributes": {...}, "children": {name: tree}}
