"""Temporary folders a conversion writes into, and the safe removal of ones a killed run left.

A temporary folder sits beside its destination and is named `.NAME.ckpt-convert-tmp-PID-RANDOM`
(a NAME too long for that to fit in 255 bytes is cut, with a hash of the whole name appended).
It holds the owner marker `owner.json` (tool, pid, the pid's start time, host, boot id, start
time, destination name) and the folder being built, `new/` (and, only where the OS cannot swap two
paths, `old/`: the old destination moved aside for a moment; a cleanup puts it back if the
destination is missing). On `--overwrite` the finished `new/`
and the old destination swap places, so the old folder too ends inside the marked temporary
folder until it is removed: whatever the moment a run is killed at, all it leaves is one marked
temporary folder.

`remove_stale_temporaries` removes a folder only if its name has that form, its marker is valid
and names the same pid, and that owner process is gone (same host and boot, pid not running or
running a different process). Never by name alone: a folder without a valid marker is left as is,
unless it is what `create` leaves when killed before its marker is whole (the folder, a marker cut
short) and the pid in its name runs no process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .durable import NAME_MAX, fit_name, rename_noreplace
from .source import open_own_file

MARKER = "owner.json"
BUILD = "new"
MOVED_ASIDE = "old"
_TOOL = "ckpt-convert"
_NAME = re.compile(r"\.(?P<name>.+)\.ckpt-convert-tmp-(?P<pid>[0-9]+)-(?P<token>[0-9a-f]{12})")
_MAX_MARKER = 4096
_SUFFIX_ROOM = len(".ckpt-convert-tmp-") + 20 + 1 + 12  # the widest pid, the token


def temp_stem(dst_name: str) -> str:
    """The NAME part of the destination `dst_name`'s temporary folders (cut to fit NAME_MAX)."""
    return fit_name(dst_name, NAME_MAX - 1 - _SUFFIX_ROOM)


@dataclass(frozen=True)
class TempFolder:
    """A marked temporary folder beside `dst`; `build` is where the new destination is written."""

    path: Path
    dst: Path

    @property
    def build(self) -> Path:
        return self.path / BUILD

    @property
    def moved_aside(self) -> Path:
        """Where an overwrite without atomic exchange moves the old destination before renaming the new one."""
        return self.path / MOVED_ASIDE

    @classmethod
    def create(cls, dst: Path) -> TempFolder:
        """Create the marked temporary folder for `dst` (whose parent must exist) and its empty `new/`."""
        path = dst.parent / f".{temp_stem(dst.name)}.ckpt-convert-tmp-{os.getpid()}-{secrets.token_hex(6)}"
        path.mkdir()
        try:
            (path / MARKER).write_text(json.dumps(owner_marker(dst.name)), encoding="utf-8")
            (path / BUILD).mkdir()
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, dst)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # field 22; the command name may hold spaces


# How every marker `create` writes begins (json.dumps keeps the key order below): a marker cut short at any
# byte is a prefix of it.
_MARKER_HEAD = json.dumps({"tool": _TOOL})[:-1].encode()


def owner_marker(dst_name: str) -> dict:
    pid = os.getpid()
    return {"tool": _TOOL, "pid": pid, "pid_start": process_start_time(pid), "host": socket.gethostname(),
            "boot_id": _boot_id(), "started": time.time(), "destination": dst_name}


def _read_marker(folder: Path) -> dict | None:
    """The folder's owner marker, or None if it is missing, not a regular file, too large or not ours."""
    try:  # a FIFO planted as the marker must not block the open (or the read)
        fd = open_own_file(folder / MARKER)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_MARKER + 1)
    try:
        marker = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if (len(raw) > _MAX_MARKER or not isinstance(marker, dict) or marker.get("tool") != _TOOL
            or type(marker.get("pid")) is not int or not isinstance(marker.get("host"), str)):
        return None
    return marker


def owner_is_gone(marker: dict) -> bool:
    """True only if the marker's process surely no longer runs: same host and boot, and its pid is
    free or now belongs to a process started at another time. Unknown (another host) is False."""
    if marker.get("host") != socket.gethostname() or marker.get("boot_id") != _boot_id():
        return False
    pid = marker["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    if _is_zombie(pid):  # exited, not yet reaped (in a container whose init does not reap, it never is)
        return True
    started = marker.get("pid_start")
    return started is not None and process_start_time(pid) not in (None, started)


def pid_is_gone(pid: int) -> bool:
    """No process has `pid`, or only its zombie; False if it runs or cannot be told (another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):  # gone meanwhile, or no /proc: the other checks decide
        return False


def _restore_moved_aside(temp: Path, dst: Path) -> None:
    """A run killed between the two renames of a non-atomic overwrite left the old destination in
    its temporary folder and no destination: put the old one back rather than remove it."""
    old = temp / MOVED_ASIDE
    if old.is_dir() and not old.is_symlink() and not os.path.lexists(dst):
        with contextlib.suppress(FileExistsError):  # someone created dst meanwhile: theirs stands
            rename_noreplace(old, dst)


def _remove_unmarked_skeleton(path: Path, pid: int) -> bool:
    """A run killed inside `TempFolder.create`, between the mkdir and the marker's last byte, leaves a folder
    with no valid marker. Remove it only if it holds nothing but a marker cut short (or none: `create` writes
    owner.json before it makes new/) and the pid in its name runs no process: each entry by name, never rmtree."""
    if pid == os.getpid() or not pid_is_gone(pid):  # alive (or its pid reused): a later run decides
        return False
    try:
        names = set(os.listdir(path))
        if not names <= {MARKER}:  # a build was started: its marker was whole, and something else changed it
            return False
        if MARKER in names:
            with os.fdopen(open_own_file(path / MARKER), "rb") as f:  # as _read_marker: a FIFO must not block
                if os.fstat(f.fileno()).st_size > _MAX_MARKER:
                    return False
                head = f.read(len(_MARKER_HEAD))  # a marker cut short: what `create` had written of it
            if not _MARKER_HEAD.startswith(head):
                return False
            os.unlink(path / MARKER)
        os.rmdir(path)
    except OSError:  # changed meanwhile, or a concurrent cleaner got there first
        return False
    return True


def is_temporary(path: Path) -> bool:
    """Whether `path` has the form of a conversion's temporary folder (the name only: not proof)."""
    return _NAME.fullmatch(path.name) is not None


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary folders in `folder` that killed conversions left, and nothing else.

    Looks only at the direct entries of `folder` (not below). An entry is removed only if it is a
    real folder (not a symlink) named `.NAME.ckpt-convert-tmp-PID-RANDOM`, holds a valid
    `owner.json` marker naming the same PID, and `owner_is_gone(marker)`. Temporary folders of live
    runs, of other hosts, and anything without a valid marker are left untouched, except what a run
    killed inside `TempFolder.create` left (`_remove_unmarked_skeleton`).

    Args:
        folder: the folder the destinations live in (a destination's parent).
        name: if given, only temporaries of the destination `folder/name`.

    Returns:
        The paths removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != temp_stem(name)):
            continue
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                continue
        path = Path(entry.path)
        marker = _read_marker(path)
        if marker is None:
            if _remove_unmarked_skeleton(path, int(match["pid"])):
                removed.append(path)
            continue
        if marker["pid"] != int(match["pid"]) or not owner_is_gone(marker):
            continue
        destination = marker.get("destination", match["name"])  # the whole name: the folder's may be cut
        if (isinstance(destination, str) and destination not in ("", ".", "..") and "/" not in destination
                and "\0" not in destination and temp_stem(destination) == match["name"]):
            _restore_moved_aside(path, Path(folder) / destination)
        shutil.rmtree(path, ignore_errors=True)  # a concurrent cleaner may be removing it too
        if not os.path.lexists(path):
            removed.append(path)
    return removed
