"""A tiny pickle assembler: the malicious corpus is written opcode by opcode, as an attacker would.

Every helper returns the bytes of one pickle *expression* (it leaves exactly one value on the
stack); `proto` wraps a body into a complete pickle. Nothing here imports what it names.
"""

from __future__ import annotations

import struct


def proto(body: bytes, version: int = 4) -> bytes:
    """PROTO n + body + STOP."""
    return b"\x80" + bytes([version]) + body + b"."


def glob(module: str, name: str) -> bytes:
    """GLOBAL (text form, every protocol)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sglob(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): module and name come from the stack."""
    return text(module) + text(name) + b"\x93"


def text(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def raw_bytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def none() -> bytes:
    return b"N"


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def lst(*items: bytes) -> bytes:
    return b"]" + (b"(" + b"".join(items) + b"e" if items else b"")


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}" + (b"(" + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) via REDUCE."""
    return func + tup(*args) + b"R"


def build(obj: bytes, state: bytes) -> bytes:
    """obj.__setstate__(state) / obj.__dict__.update(state) via BUILD."""
    return obj + state + b"b"


def put(index: int) -> bytes:
    return b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    return b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)


def frame(length: int) -> bytes:
    return b"\x95" + struct.pack("<Q", length)


def pop() -> bytes:
    return b"0"


def attr(obj: bytes, name: str) -> bytes:
    """getattr(obj, name): the classic way to reach a method."""
    return call(glob("builtins", "getattr"), obj, text(name))


def persistent(pid: bytes) -> bytes:
    return pid + b"Q"
