"""A linear walk over pickle opcodes that records every global a stream names, with its byte offset.

Unlike the reader's VM (`convert/read/vm.py`), it builds no values and never stops at the first
thing it cannot reconstruct: it follows the stack only far enough to resolve `STACK_GLOBAL`
operands (strings pushed directly or fetched from the memo) and carries on after `STOP`, so a
gadget in a second, concatenated pickle or after a later corruption is still seen. Globals are named as
pickle's find_class imports them (fix_imports at protocol < 3, `compat_names.py`). Pure standard
library (`pickletools` parses the operands); nothing named is imported.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Any

from ..model.limits import LIMITS
from ..read.compat_names import resolve
from ..read.gadgets import is_dangerous

MAX_PICKLES = LIMITS.trailing_pickles
_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})


class _Unknown:
    """A stack slot whose value the walk does not track."""


_UNKNOWN = _Unknown()


@dataclass(frozen=True)
class GlobalUse:
    """One opcode that names a global (or otherwise reaches a callable): what, where, how."""

    module: str  # "" for an unresolved STACK_GLOBAL or an EXT opcode
    name: str  # for EXT opcodes "copyreg extension code N"
    offset: int  # byte offset of the opcode in the stream
    opcode: str
    written: tuple[str, str] | None = None  # (module, name) in the stream, where fix_imports mapped them

    @property
    def as_written(self) -> tuple[str, str]:
        """(module, name) as the opcode spells them (what its length counts)."""
        return self.written or (self.module, self.name)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name or "<computed global>"


@dataclass
class Walk:
    """What one stream holds: every global use, the number of complete pickles, and where the walk stopped."""

    uses: list[GlobalUse] = field(default_factory=list)
    pickles: int = 0  # pickles read through to their STOP
    error: str | None = None  # why the walk stopped before the end of the stream, if it did
    end: int = 0  # where the walk stopped


def walk_stream(stream: Any, start: int = 0, end: int | None = None) -> Walk:
    """Every global named by the pickles in `stream[start:end]`, the first one and any concatenated after it.

    Args:
        stream: a seekable binary file object (an mmap or BytesIO); read from `start` on.
        start: where the first pickle begins.
        end: where the stream ends (default: its length).

    Returns:
        A Walk. A pickle after the first one counts only if it starts with PROTO or reads through to its
        STOP; anything else after the last complete pickle (tensor bytes of a legacy file) ends the walk
        quietly. A broken first pickle keeps the globals it named before the break, with `error` set.
    """
    stream.seek(0, 2)
    size = stream.tell() if end is None else end
    result = Walk(end=start)
    pos = start
    for index in range(MAX_PICKLES):
        if pos >= size:
            break
        stream.seek(pos)
        head = stream.read(2)
        intended = len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # PROTO n: meant to be a pickle
        stream.seek(pos)
        uses, stop, error = _walk_one(stream, pos, size)
        if error is None:
            result.uses += uses
            result.pickles += 1
            pos = result.end = stop
            continue
        if index == 0 or intended:
            result.uses += uses
            result.error = error
        break
    return result


def _walk_one(stream: Any, start: int, size: int) -> tuple[list[GlobalUse], int, str | None]:
    """One pickle from `start`: (global uses, position after STOP, error or None)."""
    uses: list[GlobalUse] = []
    sim = _Stack()
    protocol = 0  # each pickle is read by a new Unpickler: protocol 0 until a PROTO opcode says otherwise
    try:
        for op, arg, pos in pickletools.genops(stream):
            if pos is None or pos >= size:
                return uses, pos or size, "the stream ends without STOP"
            name = op.name
            if name == "STOP":
                return uses, stream.tell(), None
            if name == "PROTO":
                protocol = arg
            if name in ("GLOBAL", "INST"):
                module, _, member = str(arg).partition(" ")
                uses += _uses(module, member, protocol, pos, name)
            elif name == "STACK_GLOBAL":
                member, module = sim.pop(), sim.pop()
                sim.items.extend((module, member))  # the generic stack effect below pops them again
                resolved = type(module) is str and type(member) is str and module and member
                uses += _uses(module, member, protocol, pos, name) if resolved else [GlobalUse("", "", pos, name)]
            elif name in _EXT_OPS:
                uses.append(GlobalUse("", f"copyreg extension code {arg}", pos, name))
            sim.apply(op, arg)
    except Exception as exc:
        return uses, stream.tell(), f"{type(exc).__name__}: {exc}"[:200]
    return uses, stream.tell(), "the stream ends without STOP"


def _uses(module: str, member: str, protocol: int, pos: int, opcode: str) -> list[GlobalUse]:
    """The global as pickle's find_class imports it (fix_imports at protocol < 3).

    Where the mapping changed it, the name as written is a use too if it is itself a gadget: an unpickler
    with other tables (another Python version) could import it unmapped.
    """
    fixed = resolve(module, member, protocol)
    if fixed == (module, member):
        return [GlobalUse(module, member, pos, opcode)]
    uses = [GlobalUse(*fixed, pos, opcode, written=(module, member))]
    if is_dangerous(module, member) and not is_dangerous(*fixed):
        uses.append(GlobalUse(module, member, pos, opcode))
    return uses


class _Stack:
    """The opcode stack effects, tracking only strings (for STACK_GLOBAL) and the memo; never fails."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[Any, Any] = {}

    def pop(self) -> Any:
        return self.items.pop() if self.items else _UNKNOWN

    def pop_mark(self) -> None:
        self.items = self.marks.pop() if self.marks else []

    def apply(self, op: Any, arg: Any) -> None:
        name = op.name
        if name == "MARK":
            self.marks.append(self.items)
            self.items = []
        elif name in _STRING_OPS:
            self.items.append(arg if isinstance(arg, str) else _UNKNOWN)
        elif name in _GET_OPS:
            self.items.append(self.memo.get(arg, _UNKNOWN))
        elif name in _PUT_OPS:
            self.memo[arg] = self.items[-1] if self.items else _UNKNOWN
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.items[-1] if self.items else _UNKNOWN
        elif name == "DUP":
            self.items.append(self.items[-1] if self.items else _UNKNOWN)
        elif name == "POP" and not self.items:  # POP of a MARK
            self.pop_mark()
        else:
            before = op.stack_before
            if pickletools.markobject in before:
                self.pop_mark()
                for _ in before[: before.index(pickletools.markobject)]:
                    self.pop()
            else:
                for _ in before:
                    self.pop()
            self.items.extend(_UNKNOWN for item in op.stack_after if item is not pickletools.markobject)
