"""What a scan found: one finding per global that is not plainly safe, and the file's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from .verdicts import EXIT_CODES, SAFE, SUSPICIOUS, UNSAFE


@dataclass(frozen=True)
class ScanFinding:
    """One global (or construct) a file uses that is not plainly safe: what, how bad, where, and why."""

    name: str  # the global, "os.system"; or a construct ("TorchScript code", "a call of the result of ...")
    category: str  # exec | file | network | process | nested-loader | custom-class | unreadable
    verdict: str  # unsafe | suspicious | unreadable
    reason: str  # why it matters
    member: str | None = None  # zip member ("archive/data.pkl"), "<gzip content>", or None for the file itself
    offset: int | None = None  # byte offset of the opcode in the pickle stream
    file_offset: int | None = None  # byte offset in the file (None where the stream was decompressed)
    opcode: str | None = None
    length: int | None = None  # bytes of the opcode (with its text operands) at `offset`

    @property
    def where(self) -> str:
        parts = [p for p in (self.member, f"byte {self.offset}" if self.offset is not None else None, self.opcode) if p]
        return ", ".join(parts) or "whole file"

    def __str__(self) -> str:
        return f"{self.name} ({self.category}; {self.where})"

    def to_json(self) -> dict[str, Any]:
        return {"global": self.name, "category": self.category, "verdict": self.verdict, "reason": self.reason,
                "member": self.member, "offset": self.offset, "file_offset": self.file_offset, "length": self.length,
                "opcode": self.opcode}


@dataclass
class ScanReport:
    """What a file would do if unpickled: its verdict, every global it names, and the findings among them."""

    path: Path
    format: str | None
    verdict: str = SAFE
    findings: list[ScanFinding] = field(default_factory=list)
    globals: list[str] = field(default_factory=list)
    error: str | None = None  # why the file could not be read through (verdict unreadable, or unsafe and broken)
    exception: ConvertError | None = field(default=None, repr=False, compare=False)
    judged_uses: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # getattr/_load_from_bytes
    allowed: list[str] = field(default_factory=list)  # custom classes the user allowed (scan --allow)

    @property
    def unsafe(self) -> list[ScanFinding]:
        return [f for f in self.findings if f.verdict == UNSAFE]

    @property
    def suspicious(self) -> list[ScanFinding]:
        return [f for f in self.findings if f.verdict == SUSPICIOUS]

    @property
    def safe(self) -> bool:
        return self.verdict == SAFE

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "verdict": self.verdict, "error": self.error,
                "globals": self.globals, "findings": [f.to_json() for f in self.findings],
                **({"allowed": self.allowed} if self.allowed else {})}
