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

import io
import struct

from ..errors import UnsafeCheckpoint
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


def check_framing(data: bytes, label: str) -> None:
    """`data` is one pickle, from its first opcode to its STOP included. Raise PickleAmbiguous where its
    frames would make the C unpickler read it (or what follows it) differently from a linear reader."""
    import pickletools  # only for framed streams (protocol 4+), which torch itself never writes

    ops = [(op.name, arg, pos) for op, arg, pos in pickletools.genops(io.BytesIO(data))]
    frame_end: int | None = None
    for k, (name, arg, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else pos + 1
        if frame_end is not None and pos >= frame_end:
            frame_end = None
        if name == "FRAME":
            if frame_end is not None:
                raise PickleAmbiguous(label, f"a frame starts at byte {pos} inside the previous frame")
            frame_end = end + arg
        elif frame_end is not None and end > frame_end:
            raise PickleAmbiguous(label, f"the {name} opcode at byte {pos} runs past the end of its frame")
    if frame_end is not None and frame_end != len(data):
        raise PickleAmbiguous(label, f"STOP is inside a frame that goes on for {frame_end - len(data)} more bytes "
                                     "(the next pickle.load would start after the frame)")


def run_checked(vm: FramedVM, read: object, label: str) -> object:
    """Run `vm` and check the framing of what it read; `read(offset, n)` gives the stream's bytes."""
    start = vm.pos
    value = vm.run()
    if vm.framed:
        check_framing(read(start, vm.pos - start), label)  # type: ignore[operator]
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
