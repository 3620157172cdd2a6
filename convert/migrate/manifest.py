"""The version-1 manifest of earlier releases, read once and folded into the journal.

`.ckpt-convert-manifest.json` was one JSON document `{"version": 1, "files": {rel: entry}}`,
rewritten after every file (cost growing with the number of files: replaced by `journal.py`).
Users have them from earlier runs: the first run with the journal reads it, appends its entries
to the journal (fsync'd), then renames it to `.ckpt-convert-manifest.json.migrated` so it is
read only once. A manifest that cannot be read is left in place and reported, never deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".ckpt-convert-manifest.json"
MIGRATED_SUFFIX = ".migrated"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 30


def read_legacy_manifest(dst: Path) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """(entries, None) from a v1 manifest in `dst`, (None, None) if there is none, (None, note) if unreadable."""
    path = dst / MANIFEST_NAME
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return None, f"{path}: too large to be a manifest; left in place and ignored"
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable version-1 manifest ({type(exc).__name__}); left in place and ignored"
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(files, dict):
        return None, f"{path}: not a version-1 manifest; left in place and ignored"
    entries = {rel: e for rel, e in files.items()
               if isinstance(rel, str) and isinstance(e, dict) and isinstance(e.get("status"), str)}
    return entries, None


def retire_legacy_manifest(dst: Path) -> None:
    """Rename the v1 manifest once its entries are safely in the journal (kept for the user, not read again)."""
    path = dst / MANIFEST_NAME
    os.replace(path, path.with_name(path.name + MIGRATED_SUFFIX))
