"""The pickle interpreter: one loop, one handler per opcode, every operand checked.

It never imports or calls anything the pickle names. `GLOBAL`/`STACK_GLOBAL` produce `GlobalRef`
markers; calls (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`) on them are looked up in `allowlist.py` and
either rebuilt by our own reconstructors or recorded as inert `ObjectRecord`s. Known gadgets
(`gadgets.py`) are noted with their position, and the file is refused once the stream is read.
Lengths in the stream are checked against the bytes that are really there before anything is
allocated, so memory stays proportional to the input.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import contextvars
import functools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConvertError, MalformedCheckpoint, UnsafeCheckpoint
from ..model import limits
from ..model.collisions import check_keys, grown
from ..model.numpy_types import build_ndarray, build_npdtype
from ..model.records import GlobalRef, NdArrayRef, NpDType, ObjectRecord, StorageRef, TensorRef
from ..primitives.source import SourceBytes
from . import allowlist, compat_names, gadgets

HIGHEST_PROTOCOL = 5
MAX_LINE = 1 << 16  # text operands (protocol 0) longer than this are not from a real checkpoint
# A stream in a file (SourceBytes) is read through a window of this many bytes at most (pread, never a
# mapping: a truncated file is a clean error, not SIGBUS); operands larger than half of it are read alone.
MIN_WINDOW, MAX_WINDOW = 1 << 16, 1 << 20
# Codecs the opcodes (and zipfile's member names) use, looked up once here so that reading a file never
# imports anything, not even a codec module.
for _codec in ("raw-unicode-escape", "unicode-escape", "latin-1", "ascii", "utf-8", "cp437"):
    codecs.lookup(_codec)


# Globals whose harm depends on how they are used, judged where they are called rather than where named:
# `getattr(Class, "name")` stored as a value is an inert attribute reference (mmengine's HistoryBuffer);
# `torch.storage._load_from_bytes(blob)` is how plain `pickle.dump` writes a tensor's storage, and the blob
# is a legacy torch.save file this reader parses itself.
# `functools.partial(func, ...)` only stores its arguments (skorch pickles its optimizer setters so); calling
# the partial is what would run `func`, and a call of any computed value is refused.
GETATTR, LOAD_FROM_BYTES, PARTIAL = "builtins.getattr", "torch.storage._load_from_bytes", "functools.partial"
JUDGED_AT_CALL = frozenset({GETATTR, LOAD_FROM_BYTES, PARTIAL})
ATTRIBUTE_VIA = "getattr"  # the `via` of an ObjectRecord that is an attribute reference
SALVAGED_VIA = "salvaged-call"  # the `via` of a call that salvage neutralised instead of refusing the file
MAX_NESTED_BLOBS = 3  # pickles in blobs in blobs...: real files nest twice (skorch: its pickle, then storages)
# A BUILD state key whose bytes value the class's __setstate__ unpickles and merges into the state: skorch's
# NeuralNet keeps its modules, criteria and optimizers so (`pickle.dump(net)`, skorch's documented way to save).
NESTED_STATE_KEYS = frozenset({"__cuda_dependent_attributes__"})
# An attribute reference or a partial is only ever *stored*: passed to a call, the callee could call it
# (`dict(map(getattr(X, "f"), cmds))`), so that is refused, except to these, which only store their argument.
_STORES_CALLABLE = frozenset({PARTIAL, "collections.defaultdict"})
_MAKES_INSTANCES = frozenset({"copyreg._reconstructor", "copyreg.__newobj__"})  # (cls, ...): an instance of cls
MAX_ARGUMENT_WALK = 100_000  # values looked at in one call's arguments (beyond: refused, never seen in real files)


@dataclass
class ReadSession:
    """State shared by every VM of one read (nested blobs included): salvage mode, nesting, what was found.

    `neutralised` lists, in salvage mode, each call or use that would have run code (it became an inert
    record instead); `accepted` counts, per JUDGED_AT_CALL global, the calls accepted as inert.
    """

    salvage: bool = False
    nesting: int = 0
    neutralised: list[Finding] = field(default_factory=list)
    accepted: collections.Counter = field(default_factory=collections.Counter)


_SESSION: contextvars.ContextVar[ReadSession | None] = contextvars.ContextVar("read_session", default=None)


@contextlib.contextmanager
def reading(*, salvage: bool = False) -> Iterator[ReadSession]:
    """Every PickleVM created inside shares the returned session (salvage mode, counters)."""
    session = ReadSession(salvage=salvage)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


@dataclass(frozen=True)
class Finding:
    """One use of a known code-execution gadget: what and where."""

    name: str
    where: str

    def __str__(self) -> str:
        return f"{self.name} ({self.where})"


class _Mark:
    """Placeholder used only to make error messages precise; marks live on `metastack`."""


class PickleVM:
    """Interprets one pickle stream from `buf[start:end]`.

    `buf` is bytes-like (a zip member read into memory) or a `SourceBytes` (a file, read in windows).

    `persistent_load` maps a persistent id (torch storages) to a value; without it a persistent
    id is malformed input. After `run`, `findings` lists the gadgets seen and `globals_used` every
    global named (for `scan`).
    """

    def __init__(self, buf: Any, *, source: str, start: int = 0, end: int | None = None,
                 persistent_load: Callable[[Any], Any] | None = None, data_classes: frozenset[str] = frozenset()) -> None:
        self.pos = start
        self.end = len(buf) if end is None else end
        # `_win` holds stream bytes from offset `_base`; in memory it is the whole buffer and never refilled.
        self._source = buf if isinstance(buf, SourceBytes) else None
        self._win, self._base = (b"", start) if self._source is not None else (buf, 0)
        self._winlen = len(self._win)
        self.source = source
        self.persistent_load = persistent_load
        # Classes the caller knows to be plain data in this stream (DCP's metadata dataclasses): recorded
        # as inert ObjectRecords like any unknown class, but not reported as gadgets by module prefix.
        self.data_classes = data_classes
        self.findings: list[Finding] = []
        self.session = _SESSION.get() or ReadSession()  # a read outside `reading()`: this VM's own
        self.salvage = self.session.salvage
        self._gadgets: set[str] = set()  # qualnames of gadget globals named so far (salvage marks their calls)
        self.globals_used: dict[str, int] = {}
        self.protocol = 0
        self._dispatch = _handlers(type(self))

    # ------------------------------------------------------------------ driving

    def run(self) -> Any:
        """Interpret until STOP; returns the value. Raises UnsafeCheckpoint or MalformedCheckpoint."""
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self._op_pos = self.pos
        self._op_code = None
        dispatch = self._dispatch  # a local: this loop runs once per opcode
        try:
            while True:
                pos = self._op_pos = self.pos
                at = pos - self._base
                if pos < self.end and at < self._winlen:  # the opcode byte is in the window (always, in memory)
                    code = self._win[at]
                    self.pos = pos + 1
                else:
                    code = self._read(1)[0]  # refills the window from the file, or raises "truncated"
                self._op_code = code
                handler = dispatch.get(code)
                if handler is None:
                    raise MalformedCheckpoint(f"unknown pickle opcode 0x{code:02x}")
                if handler(self):  # only STOP returns True
                    break
        except ConvertError as exc:
            if self.findings and not self.salvage and not isinstance(exc, UnsafeCheckpoint):
                raise self._unsafe() from None
            if isinstance(exc, MalformedCheckpoint) and not getattr(exc, "located", False):
                located = MalformedCheckpoint(f"{self.source}: {exc} (byte {self._op_pos}, {self._op_name})")
                located.located = True
                raise located from None
            raise
        except (RecursionError, MemoryError):
            raise MalformedCheckpoint(f"{self.source}: structure too large or too deep (byte {self._op_pos})") from None
        except Exception as exc:  # any other failure on hostile input is malformed input, reported in one line
            if self.findings and not self.salvage:
                raise self._unsafe() from None
            raise MalformedCheckpoint(f"{self.source}: invalid pickle at byte {self._op_pos} ({self._op_name}): "
                                      f"{type(exc).__name__}: {exc}") from None
        if self.findings:
            if not self.salvage:
                raise self._unsafe()
            self.session.neutralised.extend(self.findings)
        limits.check_structure(self._result)
        return self._result

    @property
    def _op_name(self) -> str:
        """The name of the opcode being run (for messages), "start" before the first."""
        return "start" if self._op_code is None else _OPCODES.get(self._op_code, f"0x{self._op_code:02x}")

    def _unsafe(self) -> UnsafeCheckpoint:
        names = ", ".join(str(f) for f in self.findings[:20])
        more = f" and {len(self.findings) - 20} more" if len(self.findings) > 20 else ""
        exc = UnsafeCheckpoint(f"{self.source} uses {names}{more}; this file tries to run code when loaded",
                               self.findings)
        exc.globals_used = dict(self.globals_used)
        return exc

    # ------------------------------------------------------------------ reading operands

    def _read(self, n: int) -> Any:
        if n < 0 or self.pos + n > self.end:
            raise MalformedCheckpoint(f"truncated: needs {n} more bytes at byte {self.pos}, stream ends at {self.end}")
        at = self.pos - self._base
        if at + n > self._winlen:  # a file source whose window does not hold the operand yet
            return self._read_from_file(n)
        chunk = self._win[at:at + n]
        self.pos += n
        return chunk

    def _read_from_file(self, n: int) -> bytes:
        assert self._source is not None
        if n > MAX_WINDOW // 2:  # a large operand (tensor or array bytes): read on its own
            chunk = self._source.read(self.pos, n)
        else:
            self._refill(n)
            chunk = self._win[:n]
        self.pos += n
        return chunk

    def _refill(self, need: int) -> None:
        """Move the window to start at `pos`, holding at least `need` bytes (or up to the stream end)."""
        assert self._source is not None
        size = max(need, min(MAX_WINDOW, max(MIN_WINDOW, 2 * self._winlen)))
        self._base = self.pos
        self._win = self._source.read(self.pos, min(size, self.end - self.pos))
        self._winlen = len(self._win)

    def _readline(self) -> bytes:
        stop = min(self.end, self.pos + MAX_LINE)
        if stop - self._base > self._winlen:
            self._refill(stop - self.pos)
        nl = self._win.find(b"\n", self.pos - self._base, stop - self._base)
        if nl < 0:
            raise MalformedCheckpoint("truncated or overlong text operand")
        line = bytes(self._win[self.pos - self._base:nl])
        self.pos = self._base + nl + 1
        return line

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._read(n), "little")

    def _byte(self) -> int:
        """A one-byte operand (the commonest: BINPUT, BINGET, BININT1, SHORT_BINUNICODE lengths)."""
        pos = self.pos
        at = pos - self._base
        if pos < self.end and at < self._winlen:
            self.pos = pos + 1
            return self._win[at]
        return self._uint(1)  # refills the window, or raises "truncated"

    def _pop(self) -> Any:
        if not self.stack:
            raise MalformedCheckpoint("stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack:
            raise MalformedCheckpoint("stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise MalformedCheckpoint("MARK expected")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _text(self, raw: Any) -> str:
        return bytes(raw).decode("utf-8", "surrogatepass")

    def _py2_string(self, raw: bytes) -> Any:
        # pickle's default for protocol-0..2 STRING opcodes is ASCII text; anything else stays bytes.
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return raw

    # ------------------------------------------------------------------ globals and calls

    def _finding(self, name: str, op: str | None = None) -> None:
        self.findings.append(Finding(name, f"{self.source}, byte {self._op_pos}, {op or self._op_name}"))

    def _global(self, module: Any, name: Any) -> Any:
        if type(module) is not str or type(name) is not str or not module or not name:
            raise MalformedCheckpoint("global name must be two non-empty strings")
        written = (module, name)
        # The name pickle's find_class really imports: Python 2 names mapped at protocol < 3 (fix_imports).
        module, name = compat_names.resolve(module, name, self.protocol)
        qual = f"{module}.{name}"
        self.globals_used.setdefault(qual, self._op_pos)
        if qual in allowlist.VALUE_GLOBALS:
            return allowlist.VALUE_GLOBALS[qual]
        if qual not in allowlist.RECONSTRUCTORS and qual not in self.data_classes and (
                gadgets.is_dangerous(module, name) or gadgets.is_dangerous(*written)):
            self._gadgets.add(qual)
            if qual not in JUDGED_AT_CALL:
                self._finding(qual)
        return GlobalRef(module, name)

    def _call(self, func: Any, args: Any) -> Any:
        if type(args) is not tuple:
            raise MalformedCheckpoint(f"call arguments must be a tuple, got {type(args).__name__}")
        if not isinstance(func, GlobalRef):
            # Calling a computed value (the result of another call, an attribute reference) is how gadget
            # chains work: `resolve_name(...)(cmd)`, `attrgetter(...)(module)`. No checkpoint does it.
            what = func.qualname if isinstance(func, ObjectRecord) else type(func).__name__
            self._finding(f"a call of the result of {what}", "REDUCE")
            return ObjectRecord(f"<call of {what}>" if self.salvage else "<computed callable>", args=args,
                                via=SALVAGED_VIA if self.salvage else "reduce")
        qual = func.qualname
        if qual == GETATTR:
            return self._getattr(args)
        if qual == LOAD_FROM_BYTES:
            return self._load_from_bytes(args)
        if qual == PARTIAL:
            if args and type(args[0]) in (GlobalRef, ObjectRecord):
                self.session.accepted[PARTIAL] += 1
            else:
                self._finding(f"{PARTIAL} of a {type(args[0] if args else None).__name__}", "REDUCE")
        self._check_arguments(qual, args)
        reconstructor = allowlist.RECONSTRUCTORS.get(qual)
        if reconstructor is None:
            return ObjectRecord(qual, args=args, via=SALVAGED_VIA if self.salvage and qual in self._gadgets else "reduce")
        if self.salvage and qual in _MAKES_INSTANCES and args and isinstance(args[0], ObjectRecord):
            # an instance of a class the file rebuilt by value (cloudpickle at protocol 0/1): a record of it
            self._finding(f"an instance of the result of {args[0].qualname}", "REDUCE")
            return ObjectRecord(f"<instance of {args[0].qualname}>", args=args[1:], via=SALVAGED_VIA)
        return reconstructor(*args)

    def _getattr(self, args: tuple) -> Any:
        """`getattr(Class, "name")`: an inert attribute reference, never looked up; anything else is a gadget."""
        target, attr = args if len(args) == 2 else (None, None)
        if (isinstance(target, GlobalRef) and type(attr) is str and attr.isidentifier() and not attr.startswith("__")
                and target.qualname not in JUDGED_AT_CALL
                and not gadgets.is_dangerous(target.module, f"{target.name}.{attr}")):
            self.session.accepted[GETATTR] += 1
            return ObjectRecord(f"{target.qualname}.{attr}", via=ATTRIBUTE_VIA)
        what = target.qualname if isinstance(target, GlobalRef) else type(target).__name__
        self._finding(f"{GETATTR}({what}, {attr!r:.40})", "REDUCE")
        return ObjectRecord(GETATTR, args=args, via=SALVAGED_VIA if self.salvage else "reduce")

    def _load_from_bytes(self, args: tuple) -> Any:
        """`torch.storage._load_from_bytes(blob)`: the blob is a legacy torch.save file; read it like the input."""
        if len(args) != 1 or type(args[0]) not in (bytes, bytearray):
            self._finding(f"{LOAD_FROM_BYTES} of a {type(args[0] if args else None).__name__}", "REDUCE")
            return ObjectRecord(LOAD_FROM_BYTES, args=args, via=SALVAGED_VIA if self.salvage else "reduce")
        if _blob_reader is None:
            raise MalformedCheckpoint("torch.save blobs cannot be read (convert.read.blobs is not loaded)")
        reader, where = _blob_reader, f"{self.source} ({LOAD_FROM_BYTES} blob at byte {self._op_pos})"
        value = self._nested(lambda: reader(bytes(args[0]), where))
        if isinstance(value, StorageRef):
            self.session.accepted[LOAD_FROM_BYTES] += 1
            return value
        if not self.salvage:
            raise MalformedCheckpoint(f"a {LOAD_FROM_BYTES} blob holds a {type(value).__name__}, not a storage")
        return ObjectRecord(LOAD_FROM_BYTES, args=(value,), via=SALVAGED_VIA)

    def _nested(self, read: Callable[[], Any]) -> Any:
        """Run `read` (of bytes the stream holds) in this read's session, one level deeper, to a small bound."""
        if self.session.nesting >= MAX_NESTED_BLOBS:
            raise MalformedCheckpoint(f"pickles nested more than {MAX_NESTED_BLOBS} deep (a blob in a blob in ...)")
        self.session.nesting += 1
        token = _SESSION.set(self.session)  # the nested VMs share this session: its nesting, mode and counts
        try:
            return read()
        finally:
            _SESSION.reset(token)
            self.session.nesting -= 1

    def _merge_nested_state(self, state: Any) -> Any:
        """A state dict holding a NESTED_STATE_KEYS pickle: what __setstate__ would make of it (keys merged in)."""
        if type(state) is not dict or not NESTED_STATE_KEYS & state.keys():
            return state
        merged = dict(state)
        for key in NESTED_STATE_KEYS & state.keys():
            data = merged.pop(key)
            if type(data) is not bytes:
                raise MalformedCheckpoint(f"state {key} is a {type(data).__name__}, not a pickle's bytes")
            where = f"{self.source} ({key} at byte {self._op_pos})"
            inner = self._nested(lambda data=data, where=where: PickleVM(data, source=where).run())
            if type(inner) is not dict:
                raise MalformedCheckpoint(f"{where}: holds a {type(inner).__name__}, not a dict of attributes")
            merged.update(inner)
        return merged

    def _instantiate(self, cls: Any, args: tuple, via: str) -> Any:
        if not isinstance(cls, GlobalRef):
            if _is_attribute(cls) or (self.salvage and isinstance(cls, ObjectRecord)):
                what = cls.qualname if isinstance(cls, ObjectRecord) else type(cls).__name__
                self._finding(f"an instance of the result of {what}")
                return ObjectRecord(f"<instance of {what}>", args=args, via=SALVAGED_VIA if self.salvage else via)
            raise MalformedCheckpoint(f"instantiates a {type(cls).__name__}, not a class")
        if cls.qualname in JUDGED_AT_CALL:
            self._finding(f"an instance of {cls.qualname}")
        self._check_arguments(cls.qualname, args)
        record = allowlist.instantiate(cls, args, via)
        if self.salvage and cls.qualname in self._gadgets and isinstance(record, ObjectRecord):
            record.via = SALVAGED_VIA
        return record

    def _check_arguments(self, qual: str, args: Any) -> None:
        """Refuse a call whose arguments hold (at any depth) an attribute reference or a partial: the callee
        could call it (`dict(itertools.chain.from_iterable(map(map, [getattr(X, "f")], [cmds])))`). Only files
        that made such records pay for the walk; records that only store a callable are not looked into."""
        if qual in _STORES_CALLABLE or not (self.session.accepted[GETATTR] or self.session.accepted[PARTIAL]):
            return
        todo, seen, budget = list(args), set(), MAX_ARGUMENT_WALK
        while todo:
            value = todo.pop()
            if id(value) in seen or isinstance(value, (str, bytes, int, float, TensorRef, GlobalRef)):
                continue
            seen.add(id(value))
            budget -= 1
            if _is_attribute(value) or _is_partial(value) or budget < 0:
                self._finding(f"{qual} called with an attribute reference or partial among its arguments, "
                              "which it could call" if budget >= 0 else f"{qual} called with arguments too large to check")
                return
            if type(value) in (list, tuple, set, frozenset):
                todo.extend(value)
            elif isinstance(value, dict):
                todo.extend(value.keys())
                todo.extend(value.values())
            elif isinstance(value, ObjectRecord) and value.qualname not in _STORES_CALLABLE:
                todo.extend((value.args, value.state, value.listitems, value.dictitems))

    def _check_target(self, what: str) -> None:
        """An attribute reference is a function or class: APPEND/SETITEM/BUILD on it would call its code."""
        if self.stack and _is_attribute(self.stack[-1]):
            self._finding(f"{what} on the attribute reference {self.stack[-1].qualname}")

    # ------------------------------------------------------------------ opcodes

    def op_PROTO(self) -> None:
        self.protocol = self._read(1)[0]
        if self.protocol > HIGHEST_PROTOCOL:
            raise MalformedCheckpoint(f"unsupported pickle protocol {self.protocol}")

    def op_FRAME(self) -> None:
        size = self._uint(8)
        if size > self.end - self.pos:
            raise MalformedCheckpoint(f"frame of {size} bytes exceeds the {self.end - self.pos} bytes left")

    def op_STOP(self) -> bool:
        if len(self.stack) != 1 or self.metastack:
            raise MalformedCheckpoint("STOP with an unbalanced stack")
        self._result = self.stack.pop()
        return True

    def op_MARK(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def op_POP_MARK(self) -> None:
        self._pop_mark()

    def op_DUP(self) -> None:
        self.stack.append(self._top())

    # numbers
    def op_INT(self) -> None:
        line = self._readline().strip()
        if line == b"00":
            self.stack.append(False)
        elif line == b"01":
            self.stack.append(True)
        else:
            self.stack.append(int(line.decode("ascii")))

    def op_LONG(self) -> None:
        line = self._readline().strip()
        self.stack.append(int(line.removesuffix(b"L").decode("ascii")))

    def op_BININT(self) -> None:
        self.stack.append(int.from_bytes(self._read(4), "little", signed=True))

    def op_BININT1(self) -> None:
        self.stack.append(self._byte())

    def op_BININT2(self) -> None:
        self.stack.append(self._uint(2))

    def op_LONG1(self) -> None:
        self.stack.append(int.from_bytes(self._read(self._uint(1)), "little", signed=True))

    def op_LONG4(self) -> None:
        n = int.from_bytes(self._read(4), "little", signed=True)
        if n < 0:
            raise MalformedCheckpoint("negative LONG4 length")
        self.stack.append(int.from_bytes(self._read(n), "little", signed=True))

    def op_FLOAT(self) -> None:
        self.stack.append(float(self._readline().decode("ascii")))

    def op_BINFLOAT(self) -> None:
        self.stack.append(struct.unpack(">d", self._read(8))[0])

    def op_NONE(self) -> None:
        self.stack.append(None)

    def op_NEWTRUE(self) -> None:
        self.stack.append(True)

    def op_NEWFALSE(self) -> None:
        self.stack.append(False)

    # strings and bytes
    def op_STRING(self) -> None:
        line = self._readline().rstrip(b"\r")
        if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
            raise MalformedCheckpoint("STRING operand is not quoted")
        self.stack.append(self._py2_string(codecs.escape_decode(line[1:-1])[0]))

    def op_BINSTRING(self) -> None:
        n = int.from_bytes(self._read(4), "little", signed=True)
        if n < 0:
            raise MalformedCheckpoint("negative BINSTRING length")
        self.stack.append(self._py2_string(bytes(self._read(n))))

    def op_SHORT_BINSTRING(self) -> None:
        self.stack.append(self._py2_string(bytes(self._read(self._uint(1)))))

    def op_UNICODE(self) -> None:
        self.stack.append(self._readline().decode("raw-unicode-escape"))

    def op_BINUNICODE(self) -> None:
        self.stack.append(self._text(self._read(self._uint(4))))

    def op_SHORT_BINUNICODE(self) -> None:
        self.stack.append(self._text(self._read(self._byte())))

    def op_BINUNICODE8(self) -> None:
        self.stack.append(self._text(self._read(self._uint(8))))

    def op_BINBYTES(self) -> None:
        self.stack.append(bytes(self._read(self._uint(4))))

    def op_SHORT_BINBYTES(self) -> None:
        self.stack.append(bytes(self._read(self._uint(1))))

    def op_BINBYTES8(self) -> None:
        self.stack.append(bytes(self._read(self._uint(8))))

    def op_BYTEARRAY8(self) -> None:
        self.stack.append(bytearray(self._read(self._uint(8))))

    def op_NEXT_BUFFER(self) -> None:
        raise MalformedCheckpoint("uses an out-of-band buffer (pickle protocol 5) that a file cannot carry")

    def op_READONLY_BUFFER(self) -> None:
        # pickle takes a memoryview of the top: anything but bytes-like data makes it fail, so must we
        if type(self._top()) not in (bytes, bytearray):
            raise MalformedCheckpoint(f"READONLY_BUFFER on a {type(self._top()).__name__}, not a buffer")

    # containers
    def op_EMPTY_TUPLE(self) -> None:
        self.stack.append(())

    def op_TUPLE(self) -> None:
        items = self._pop_mark()  # before touching self.stack: _pop_mark replaces it
        self.stack.append(tuple(items))

    def op_TUPLE1(self) -> None:
        self.stack.append((self._pop(),))

    def op_TUPLE2(self) -> None:
        b = self._pop()
        self.stack.append((self._pop(), b))

    def op_TUPLE3(self) -> None:
        c = self._pop()
        b = self._pop()
        self.stack.append((self._pop(), b, c))

    def op_EMPTY_LIST(self) -> None:
        self.stack.append([])

    def op_LIST(self) -> None:
        items = self._pop_mark()
        self.stack.append(items)

    def op_EMPTY_DICT(self) -> None:
        self.stack.append({})

    def op_DICT(self) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            raise MalformedCheckpoint("DICT with an odd number of items")
        check_keys(items[::2], "DICT")
        self.stack.append(dict(zip(items[::2], items[1::2])))

    def op_EMPTY_SET(self) -> None:
        self.stack.append(set())

    def op_FROZENSET(self) -> None:
        items = self._pop_mark()
        check_keys(items, "FROZENSET")
        self.stack.append(frozenset(items))

    def op_ADDITEMS(self) -> None:
        items = self._pop_mark()
        target = self._top()
        if type(target) is not set:
            raise MalformedCheckpoint(f"ADDITEMS on a {type(target).__name__}")
        for item in items:
            target.add(item)
            grown(target, "ADDITEMS")

    def _append(self, items: list[Any]) -> None:
        self._check_target("APPEND")
        self._salvaging(append_items, self._top(), items)

    def _salvaging(self, apply: Callable[[Any, Any], None], target: Any, arg: Any) -> None:
        """APPEND/SETITEMS/BUILD; in salvage mode, one on a value no loader could apply it to is dropped, noted."""
        try:
            apply(target, arg)
        except MalformedCheckpoint:
            if not self.salvage:
                raise
            self.session.neutralised.append(Finding(f"{self._op_name} on a {type(target).__name__}",
                                                    f"{self.source}, byte {self._op_pos}, {self._op_name}"))

    def op_APPEND(self) -> None:
        self._append([self._pop()])

    def op_APPENDS(self) -> None:
        self._append(self._pop_mark())

    def _setitems(self, items: list[Any]) -> None:
        if len(items) % 2:
            raise MalformedCheckpoint("SETITEMS with an odd number of items")
        self._check_target("SETITEMS")
        self._salvaging(set_items, self._top(), list(zip(items[::2], items[1::2])))

    def op_SETITEM(self) -> None:
        value = self._pop()
        key = self._pop()
        self._setitems([key, value])

    def op_SETITEMS(self) -> None:
        self._setitems(self._pop_mark())

    # memo
    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise MalformedCheckpoint(f"memo entry {index} was never stored")
        self.stack.append(self.memo[index])

    def op_GET(self) -> None:
        self._get(int(self._readline().decode("ascii")))

    def op_BINGET(self) -> None:
        self._get(self._byte())

    def op_LONG_BINGET(self) -> None:
        self._get(self._uint(4))

    def _memo_index(self, index: int) -> int:
        # Picklers number memo entries 0, 1, 2, ...: each takes at least one byte of the stream before it.
        if not 0 <= index <= self.pos:
            raise MalformedCheckpoint(f"memo index {index} at byte {self.pos} is out of range")
        return index

    def op_PUT(self) -> None:
        index = self._memo_index(int(self._readline().decode("ascii")))
        self.memo[index] = self._top()

    def op_BINPUT(self) -> None:
        self.memo[self._byte()] = self._top()

    def op_LONG_BINPUT(self) -> None:
        self.memo[self._memo_index(self._uint(4))] = self._top()

    def op_MEMOIZE(self) -> None:
        self.memo[len(self.memo)] = self._top()

    # globals, calls, objects
    def op_GLOBAL(self) -> None:
        module = self._readline().decode("utf-8")
        name = self._readline().decode("utf-8")
        self.stack.append(self._global(module, name))

    def op_STACK_GLOBAL(self) -> None:
        name = self._pop()
        module = self._pop()
        self.stack.append(self._global(module, name))

    def op_REDUCE(self) -> None:
        args = self._pop()
        func = self._pop()
        self.stack.append(self._call(func, args))

    def op_NEWOBJ(self) -> None:
        args = self._pop()
        cls = self._pop()
        if type(args) is not tuple:
            raise MalformedCheckpoint("NEWOBJ arguments must be a tuple")
        self.stack.append(self._instantiate(cls, args, "newobj"))

    def op_NEWOBJ_EX(self) -> None:
        kwargs = self._pop()
        args = self._pop()
        cls = self._pop()
        if type(args) is not tuple or type(kwargs) is not dict:
            raise MalformedCheckpoint("NEWOBJ_EX arguments are malformed")
        if kwargs:
            if not isinstance(cls, GlobalRef):
                raise MalformedCheckpoint("NEWOBJ_EX on a value that is not a class")
            self._check_arguments(cls.qualname, (*args, *kwargs.values()))
            self.stack.append(ObjectRecord(cls.qualname, args=(args, kwargs), via="newobj_ex"))
        else:
            self.stack.append(self._instantiate(cls, args, "newobj"))

    def op_INST(self) -> None:
        module = self._readline().decode("utf-8")
        name = self._readline().decode("utf-8")
        cls = self._global(module, name)
        args = tuple(self._pop_mark())
        self.stack.append(self._instantiate(cls, args, "inst"))

    def op_OBJ(self) -> None:
        items = self._pop_mark()
        if not items:
            raise MalformedCheckpoint("OBJ without a class")
        self.stack.append(self._instantiate(items[0], tuple(items[1:]), "obj"))

    def op_BUILD(self) -> None:
        state = self._merge_nested_state(self._pop())
        self._check_target("BUILD")
        self._salvaging(build, self._top(), state)

    def _ext(self, code: int) -> None:
        self.findings.append(Finding(f"copyreg extension code {code}",
                                     f"{self.source}, byte {self._op_pos}, {self._op_name}"))
        self.stack.append(ObjectRecord(f"copyreg.extension.{code}", via="ext"))

    def op_EXT1(self) -> None:
        self._ext(self._uint(1))

    def op_EXT2(self) -> None:
        self._ext(self._uint(2))

    def op_EXT4(self) -> None:
        self._ext(self._uint(4))

    def _persistent(self, pid: Any) -> None:
        if self.persistent_load is None:
            raise MalformedCheckpoint("persistent id in a plain pickle (no storages to refer to)")
        self.stack.append(self.persistent_load(pid))

    def op_PERSID(self) -> None:
        self._persistent(self._readline().decode("ascii"))

    def op_BINPERSID(self) -> None:
        self._persistent(self._pop())


_blob_reader: Callable[[bytes, str], Any] | None = None


def register_blob_reader(reader: Callable[[bytes, str], Any]) -> None:
    """Set by convert.read.blobs (which builds on the containers, which build on this module)."""
    global _blob_reader
    _blob_reader = reader


def _is_attribute(value: Any) -> bool:
    return isinstance(value, ObjectRecord) and value.via == ATTRIBUTE_VIA


def _is_partial(value: Any) -> bool:
    return isinstance(value, ObjectRecord) and value.qualname == PARTIAL


# What APPEND(S), SETITEM(S) and BUILD do to the value they apply to; also used by save_checkpoint,
# which records live objects exactly as this VM records their pickles.

def append_items(target: Any, items: list[Any]) -> None:
    """APPEND(S): items of a list, or of a list subclass recorded as an ObjectRecord."""
    if type(target) is list:
        target.extend(items)
    elif isinstance(target, ObjectRecord):
        target.listitems.extend(items)
    else:
        raise MalformedCheckpoint(f"APPEND on a {type(target).__name__}")


def set_items(target: Any, pairs: list[tuple[Any, Any]]) -> None:
    """SETITEM(S): items of a dict, or of a dict subclass recorded as an ObjectRecord."""
    if type(target) in (dict, collections.OrderedDict):
        for key, value in pairs:
            target[key] = value
            grown(target, "SETITEMS")
    elif isinstance(target, ObjectRecord):
        target.dictitems.extend(pairs)
    else:
        raise MalformedCheckpoint(f"SETITEM on a {type(target).__name__}")


def build(target: Any, state: Any) -> None:
    """BUILD: `state` applied to the object just made (recorded, never passed to a __setstate__)."""
    if isinstance(target, ObjectRecord):
        target.state = state if target.state is None else (target.state, state)
    elif isinstance(target, NdArrayRef):
        build_ndarray(target, state)
    elif isinstance(target, NpDType):
        build_npdtype(target, state)
    elif type(target) is collections.OrderedDict:
        _set_attributes(target, state)
    elif isinstance(target, TensorRef) and isinstance(state, dict):
        target.attrs.update(allowlist._tensor_attrs(state))
    else:
        raise MalformedCheckpoint(f"BUILD on a {type(target).__name__}")


def _set_attributes(target: collections.OrderedDict, state: Any) -> None:
    """BUILD on an OrderedDict sets attributes: `_metadata` on a state_dict. Only plain names."""
    if type(state) is tuple and len(state) == 2 and state[1] is None:
        state = state[0]
    if not isinstance(state, dict):
        raise MalformedCheckpoint("OrderedDict state must be a dict of attributes")
    for name, value in state.items():
        if type(name) is not str or not name.isidentifier() or name.startswith("__"):
            raise MalformedCheckpoint(f"OrderedDict attribute name {name!r:.40} is not allowed")
        target.__dict__[name] = value


@functools.cache
def _handlers(cls: type) -> dict[int, Callable[[Any], Any]]:
    """opcode → the class's handler function (built once per class, not once per stream: scan runs a VM per file)."""
    return {op: getattr(cls, "op_" + name) for op, name in _OPCODES.items()}


_OPCODES: dict[int, str] = {
    ord(code): name for name, code in {
        "MARK": "(", "STOP": ".", "POP": "0", "POP_MARK": "1", "DUP": "2", "FLOAT": "F", "INT": "I",
        "BININT": "J", "BININT1": "K", "LONG": "L", "BININT2": "M", "NONE": "N", "PERSID": "P",
        "BINPERSID": "Q", "REDUCE": "R", "STRING": "S", "BINSTRING": "T", "SHORT_BINSTRING": "U",
        "UNICODE": "V", "BINUNICODE": "X", "APPEND": "a", "BUILD": "b", "GLOBAL": "c", "DICT": "d",
        "EMPTY_DICT": "}", "APPENDS": "e", "GET": "g", "BINGET": "h", "INST": "i", "LONG_BINGET": "j",
        "LIST": "l", "EMPTY_LIST": "]", "OBJ": "o", "PUT": "p", "BINPUT": "q", "LONG_BINPUT": "r",
        "SETITEM": "s", "TUPLE": "t", "EMPTY_TUPLE": ")", "SETITEMS": "u", "BINFLOAT": "G",
        "PROTO": "\x80", "NEWOBJ": "\x81", "EXT1": "\x82", "EXT2": "\x83", "EXT4": "\x84",
        "TUPLE1": "\x85", "TUPLE2": "\x86", "TUPLE3": "\x87", "NEWTRUE": "\x88", "NEWFALSE": "\x89",
        "LONG1": "\x8a", "LONG4": "\x8b", "BINBYTES": "B", "SHORT_BINBYTES": "C",
        "SHORT_BINUNICODE": "\x8c", "BINUNICODE8": "\x8d", "BINBYTES8": "\x8e", "EMPTY_SET": "\x8f",
        "ADDITEMS": "\x90", "FROZENSET": "\x91", "NEWOBJ_EX": "\x92", "STACK_GLOBAL": "\x93",
        "MEMOIZE": "\x94", "FRAME": "\x95", "BYTEARRAY8": "\x96", "NEXT_BUFFER": "\x97",
        "READONLY_BUFFER": "\x98",
    }.items()
}
