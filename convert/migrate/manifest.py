"""The migration manifest: what each source file became, so a re-run can skip or retry it.

Kept in DST/.ckpt-convert-manifest.json and replaced atomically (write to a temp file, fsync,
rename) after every finished job, so a run killed at any moment leaves a manifest that only
lists outputs that were completely written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".ckpt-convert-manifest.json"
MANIFEST_VERSION = 1


class Manifest:
    def __init__(self, dst: Path) -> None:
        self.path = dst / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == MANIFEST_VERSION and isinstance(data.get("files"), dict):
                    self.entries = data["files"]
            except (ValueError, OSError, AttributeError):
                self.entries = {}  # unreadable: start over; outputs are re-verified, never trusted blindly

    def done(self, rel: str, size: int, mtime_ns: int, dst: Path) -> dict[str, Any] | None:
        """The entry if `rel` was converted and verified from a file of this size and mtime, and its output is there."""
        entry = self.entries.get(rel)
        if not entry or entry.get("status") not in ("converted", "skipped") or not entry.get("verified"):
            return None
        if entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
            return None
        # a framework folder (frameworks.py) is renamed into place whole: its existence means complete
        complete = (dst / entry["output"]).is_dir() if entry.get("kind") == "framework" else \
            (dst / entry["output"] / "checkpoint.json").is_file()
        if not complete:
            return None
        return entry

    def record(self, rel: str, entry: dict[str, Any]) -> None:
        self.entries[rel] = entry
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": MANIFEST_VERSION, "files": self.entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
