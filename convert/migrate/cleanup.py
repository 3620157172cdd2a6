"""Removing the temp folders a killed conversion left behind, and nothing else.

A temp folder is removed only if all of these hold: its name is the writer's pattern
(`.NAME.tmp-<12 hex>` or `.NAME.old-<12 hex>`), it is a real folder (not a symlink), it holds the
marker file `.ckpt-convert-tmp` naming the pid (and host) that created it, the host is this one,
and that process no longer exists. A name alone is never enough: a user's `.backup.old-2023/` is
not ours. A marker from another host (a Ray worker elsewhere) is left alone: its pid means nothing here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
from pathlib import Path

TEMP_MARKER = ".ckpt-convert-tmp"
TEMP_NAME = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{12}$")


def marker_owner(folder: Path) -> tuple[int, str | None] | None:
    """(pid, host) the marker names (`PID [HOST]` or JSON `{"pid": PID, "host": HOST}`), None if unreadable."""
    try:
        fd = os.open(folder / TEMP_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 256).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if text.startswith("{"):
        try:
            doc = json.loads(text)
            pid, host = doc.get("pid"), doc.get("host")
        except (ValueError, AttributeError):
            return None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        return pid, host if isinstance(host, str) else None
    parts = text.split()
    if not parts or not parts[0].isdigit() or int(parts[0]) <= 0:
        return None
    return int(parts[0]), parts[1] if len(parts) > 1 else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a dead process nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc (not Linux): trust kill(pid, 0)
        return True


def write_marker(folder: Path) -> None:
    """Mark `folder` as a temp folder of this process (what `remove_stale_temporaries` looks for)."""
    with open(folder / TEMP_MARKER, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}\n")


def remove_stale_temporaries(folder: Path) -> int:
    """Remove this tool's abandoned temp folders directly inside `folder`; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not TEMP_NAME.match(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        owner = marker_owner(Path(entry.path))
        if owner is None or owner[1] not in (None, socket.gethostname()) or pid_alive(owner[0]):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed
