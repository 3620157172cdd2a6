"""What a killed worker can leave that the marker rule (`primitives.temp.remove_stale_temporaries`) must keep.

`TempFolder.create` makes the folder `.NAME.ckpt-convert-tmp-PID-TOKEN`, then writes its `owner.json`,
then makes `new/`. A worker killed between the first two steps (a stop of migrate kills busy workers
at any instant) leaves a folder with no valid marker, which the marker rule rightly never removes.
Migrate knows more than that rule: the folder is named for an output this migration was writing
(`out`, an interrupted job of its own), it holds nothing but a marker being written (no `new/`: no
build started), and the process named in its name no longer exists. Only such a folder is removed here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from ..primitives.temp import MARKER, _is_zombie, is_temporary, temp_stem  # the marker rule's own zombie test

MAX_MARKER = 4096  # a marker being written is small; anything larger is not one


def _process_gone(pid: int) -> bool:
    """No such process, or only its zombie (a worker killed with its driver, not reaped in a container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive (another user's) or unknown: not gone
        return False
    return _is_zombie(pid)


def remove_unmarked_builds(out: Path) -> list[Path]:
    """Remove the temp folders of the output `out` that a killed worker left before writing its marker.

    Returns:
        The folders removed.
    """
    prefix = f".{temp_stem(out.name)}.ckpt-convert-tmp-"
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(out.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if not is_temporary(path) or not pid.isdigit():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            names = os.listdir(path)
            if set(names) - {MARKER}:
                continue  # a build was started: its marker is complete, the marker rule decides
            if names:
                st = os.lstat(path / MARKER)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MARKER:
                    continue
        except OSError:
            continue
        if not _process_gone(int(pid)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
            removed.append(path)
    return removed
