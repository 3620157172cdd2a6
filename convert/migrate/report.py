"""The migration / scan report: one JSON document and a human summary, same shape for both.

Counts are kept as entries arrive (no rescan), and the JSON is written once, at the end, entry
by entry (no second copy of 100k entries as one string).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..primitives.durable import write_atomic

REPORT_NAME = "ckpt-convert-report.json"
STATUSES = ("converted", "skipped", "clean", "unsafe", "failed")
SHOWN_ALWAYS = ("converted", "skipped", "unsafe", "failed")
MAX_PROBLEMS_SHOWN = 200
EXIT_UNSAFE, EXIT_FAILED = 1, 2  # exit-code bits: an unsafe file and a failed one give 3


@dataclass
class Report:
    command: str  # "migrate" or "scan"
    source: str
    destination: str | None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_files: int = 0
    special_files: int = 0  # FIFOs, sockets, devices the walker skipped without opening
    notes: list[str] = field(default_factory=list)  # warnings for the user (dropped journal lines, ...)
    skipped_paths: list[dict[str, str]] = field(default_factory=list)  # symlinks not followed, ...: path + reason
    counts: dict[str, int] = field(default_factory=dict)
    signed_earlier: int = 0  # migrate --sign-key: outputs of earlier runs signed by this one

    def add(self, rel: str, entry: dict[str, Any]) -> None:
        """Record one file's outcome (a later outcome for the same file replaces the earlier)."""
        old = self.files.get(rel)
        if old is not None:
            self.counts[old["status"]] -= 1
        self.files[rel] = entry
        self.counts[entry["status"]] = self.counts.get(entry["status"], 0) + 1

    def skip_paths(self, skipped: list[tuple[str, str]]) -> None:
        """Record paths the walk (or a unit's conversion) passed over without reading, with the reason."""
        self.skipped_paths += [{"path": rel, "reason": reason} for rel, reason in skipped]

    @property
    def summary(self) -> dict[str, int]:
        if sum(self.counts.values()) != len(self.files):  # `files` filled directly, not through add()
            self.counts = {}
            for entry in self.files.values():
                self.counts[entry["status"]] = self.counts.get(entry["status"], 0) + 1
        counts = {**dict.fromkeys(STATUSES, 0), **self.counts}
        return {k: v for k, v in counts.items() if v or k in SHOWN_ALWAYS}

    @property
    def exit_code(self) -> int:
        """Bits, so that neither hides the other: 1 if anything was refused as unsafe, 2 if anything failed,
        3 if both; else 0."""
        summary = self.summary
        return (EXIT_UNSAFE if summary.get("unsafe") else 0) | (EXIT_FAILED if summary.get("failed") else 0)

    def _head(self) -> dict[str, Any]:
        return {"command": self.command, "source": self.source, "destination": self.destination,
                "summary": self.summary, "other_files": self.other_files, "special_files": self.special_files,
                "skipped_paths": self.skipped_paths, "notes": self.notes, "exit_code": self.exit_code,
                **({"signed_earlier": self.signed_earlier} if self.command == "migrate" else {})}

    def to_json(self) -> dict[str, Any]:
        return {**self._head(), "files": dict(sorted(self.files.items()))}

    def write(self, path: Path) -> None:
        """Write the report atomically, one entry per line (primitives.durable.write_atomic)."""
        write_atomic(path, self._lines())

    def _lines(self) -> Iterator[bytes]:
        head = json.dumps(self._head(), indent=1, ensure_ascii=True)
        # ASCII with \\u escapes: a name that is not UTF-8 appears as its surrogateescape string ("caf\\udce9.pt")
        yield (head[:-2] + ',\n "files": {').encode("ascii")
        sep = "\n"
        for rel in sorted(self.files):
            yield f"{sep}  {json.dumps(rel)}: {json.dumps(self.files[rel], sort_keys=True)}".encode("ascii")
            sep = ",\n"
        yield b"\n }\n}\n"

    def table(self) -> str:
        lines = [f"{self.command}: {self.source}" + (f" → {self.destination}" if self.destination else "")]
        summary = self.summary
        width = max(len(k) for k in (*summary, "special files"))
        lines += [f"  {k.ljust(width)}  {v}" for k, v in summary.items()]
        lines.append(f"  {'other files'.ljust(width)}  {self.other_files} (not checkpoints, left alone)")
        if self.signed_earlier:
            lines.append(f"  signed {self.signed_earlier} earlier output(s) (converted by an earlier run) with --sign-key")
        if self.special_files:
            lines.append(f"  {'special files'.ljust(width)}  {self.special_files} (FIFOs, sockets, devices: "
                         "skipped, never opened)")
        if self.skipped_paths:
            lines.append(f"  {'not followed'.ljust(width)}  {len(self.skipped_paths)} (symlinks out of the source, ...):")
            lines += [f"    {s['path']}: {s['reason']}" for s in self.skipped_paths[:20]]
            if len(self.skipped_paths) > 20:
                lines.append(f"    ... and {len(self.skipped_paths) - 20} more (see the JSON report)")
        problems = [(rel, e) for rel, e in self.files.items() if e["status"] in ("unsafe", "failed")]
        if problems:
            lines.append("problems:")
            for rel, entry in sorted(problems)[:MAX_PROBLEMS_SHOWN]:
                lines.append(f"  {entry['status'].upper():8} {rel}: {entry.get('reason', '')[:300]}")
            if len(problems) > MAX_PROBLEMS_SHOWN:
                lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more (see the JSON report)")
        return "\n".join(lines)
