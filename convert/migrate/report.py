"""The migration / scan report: one JSON document and a human summary, same shape for both."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_NAME = "ckpt-convert-report.json"
STATUSES = ("converted", "skipped", "clean", "unsafe", "failed")


@dataclass
class Report:
    command: str  # "migrate" or "scan"
    source: str
    destination: str | None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_files: int = 0

    @property
    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for entry in self.files.values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        return {k: v for k, v in counts.items() if v or k in ("converted", "skipped", "unsafe", "failed")}

    @property
    def exit_code(self) -> int:
        """1 if anything was refused as unsafe, 2 if anything failed, else 0."""
        statuses = {e["status"] for e in self.files.values()}
        return 1 if "unsafe" in statuses else 2 if "failed" in statuses else 0

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "source": self.source, "destination": self.destination,
                "summary": self.summary, "other_files": self.other_files, "exit_code": self.exit_code,
                "files": dict(sorted(self.files.items()))}

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def table(self) -> str:
        lines = [f"{self.command}: {self.source}" + (f" → {self.destination}" if self.destination else "")]
        summary = self.summary
        width = max(len(k) for k in summary)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in summary.items()]
        lines.append(f"  {'other files'.ljust(width)}  {self.other_files} (not checkpoints, left alone)")
        problems = [(rel, e) for rel, e in sorted(self.files.items()) if e["status"] in ("unsafe", "failed")]
        if problems:
            lines.append("problems:")
            for rel, entry in problems:
                lines.append(f"  {entry['status'].upper():8} {rel}: {entry.get('reason', '')[:300]}")
        return "\n".join(lines)
