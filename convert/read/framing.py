"""Pickle framing and the tar probe as the real loaders see them: refuse where they would read other bytes.

FRAME (protocol 4+) tells the unpickler how many bytes to read at once. CPython's C unpickler reads a
frame that is not already in its look-ahead buffer with one `read(n)` and never gives bytes back, so
when a pickle's STOP sits inside a frame the next `pickle.load` on the same file (torch's legacy
format calls it five times in a row) starts after the frame, not after STOP; and an opcode that runs
past its frame's end is read from after the frame by the C unpickler but refused by Python's. Our VM
reads the stream linearly, so a pickle is accepted only if its frames end on opcode boundaries, no
frame starts inside another, and the frame holding STOP ends right after it.

torch.load first tries the file as a (pre-2017) tar archive: any first block `tarfile` accepts (a valid
checksum is enough; the `ustar` magic is optional) makes it a tar, read by tarfile, not by us.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import MalformedCheckpoint, UnsafeCheckpoint
from .vm import Finding, PickleVM

TAR_BLOCK = 512


class PickleAmbiguous(UnsafeCheckpoint):
    """pickle's C and Python unpicklers (or torch's tar probe) would read this file differently."""

    def __init__(self, label: str, why: str) -> None:
        super().__init__(f"{label}: ambiguous pickle stream ({why}): loaders could read different contents; refused",
                         [Finding("pickle parser differential", why)])


class FramedVM(PickleVM):
    """The pickle VM, noting whether the stream used FRAME (the framing check below is only needed then)."""

    framed = False

    def op_FRAME(self) -> None:  # noqa: N802 (the VM names handlers after opcodes)
        self.framed = True
        super().op_FRAME()


class _Stream:
    """A read-only file over `read(offset, n)` from `start` to `end` (what pickletools.genops needs)."""

    def __init__(self, read: Callable[[int, int], bytes], start: int, end: int) -> None:
        self._read, self._pos, self._start, self._end = read, start, start, end

    def read(self, n: int = -1) -> bytes:
        n = self._end - self._pos if n < 0 else min(n, self._end - self._pos)
        data = self._read(self._pos, n)
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        out = b""
        while self._pos < self._end and not out.endswith(b"\n"):
            chunk = self._read(self._pos, min(4096, self._end - self._pos))
            cut = chunk.find(b"\n")
            chunk = chunk if cut < 0 else chunk[:cut + 1]
            out += chunk
            self._pos += len(chunk)
        return out

    def tell(self) -> int:
        return self._pos - self._start


def check_framing(read: Callable[[int, int], bytes], start: int, end: int, label: str) -> None:
    """The pickle at [start, end) (its first opcode to its STOP included), read with `read(offset, n)`.
    Raise PickleAmbiguous where its frames would make the C unpickler read it (or what follows it)
    differently from a linear reader."""
    import pickletools  # only for framed streams (protocol 4+), which torch itself never writes

    length = end - start
    frame_end: int | None = None
    previous: tuple[str, int] | None = None  # (name, pos) of the opcode before the current one

    def close(name: str, pos: int, op_end: int) -> None:
        nonlocal frame_end
        if frame_end is not None and op_end > frame_end and pos < frame_end:
            raise PickleAmbiguous(label, f"the {name} opcode at byte {pos} runs past the end of its frame")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol-0 string escapes pickletools finds deprecated
            for op, arg, pos in pickletools.genops(_Stream(read, start, end)):
                if previous is not None:
                    close(*previous, pos)
                if frame_end is not None and pos >= frame_end:
                    frame_end = None
                if op.name == "FRAME":
                    if frame_end is not None:
                        raise PickleAmbiguous(label, f"a frame starts at byte {pos} inside the previous frame")
                    frame_end = pos + 9 + arg
                previous = (op.name, pos)
    except PickleAmbiguous:
        raise
    except Exception as exc:  # what the VM read but pickletools cannot delimit: refuse rather than guess
        raise MalformedCheckpoint(f"{label}: framed pickle whose opcodes cannot be delimited ({exc})") from None
    if previous is not None:
        close(*previous, length)
    if frame_end is not None and frame_end != length:
        raise PickleAmbiguous(label, f"STOP is inside a frame that goes on for {frame_end - length} more bytes "
                                     "(the next pickle.load would start after the frame)")


def run_checked(vm: FramedVM, read: Callable[[int, int], bytes], label: str) -> Any:
    """Run `vm` and check the framing of what it read; `read(offset, n)` gives the stream's bytes."""
    start = vm.pos
    value = vm.run()
    if vm.framed:
        check_framing(read, start, vm.pos, label)
    return value


def _octal_field(field: bytes) -> int | None:
    """tarfile's `nti`: base-256 if flagged, else NUL-terminated ASCII octal (int() rules); None if invalid."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        return n - (256 ** (len(field) - 1)) if field[0] == 0xFF else n
    text = field.split(b"\x00", 1)[0]
    try:
        return int(text.decode("ascii").strip() or "0", 8)
    except (UnicodeDecodeError, ValueError):
        return None


def is_tar_header(block: bytes) -> bool:
    """Whether tarfile (and so torch.load's legacy tar probe) accepts `block` as the first header of a tar."""
    if len(block) < TAR_BLOCK or block[:TAR_BLOCK].count(0) == TAR_BLOCK:
        return False
    block = block[:TAR_BLOCK]
    checksum = _octal_field(block[148:156])
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(struct.unpack("148b", block[:148])) + sum(struct.unpack("356b", block[156:]))
    return checksum in (unsigned, signed)
