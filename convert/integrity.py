"""A converted folder's integrity record: what ties checkpoint.json to its data files, and the check.

Each conversion draws a random folder id. It is written into every safetensors file's
`__metadata__` (as `folder_id`, beside `"format": "pt"`) and into the sidecar (top-level
`folder_id`), together with each data file's sha256 (`files[NAME]["sha256"]`, over the whole
file, header included). checkpoint.json is the last file written, so a complete folder always
carries a record of its own data files. SHA-256 because it is the common choice users can check
with `sha256sum`, and with the SHA extensions of current CPUs it hashes faster than the disk
writes (see benchmarks/durability.py).

Checks, cheapest first:
- `check_header` (every load, no extra I/O): the file's folder id equals the sidecar's and its data
  area has the size the sidecar records. A file from another conversion is refused.
- `file_sha256` / `verify_folder` (`load_checkpoint(verify=True)`, `ckpt-convert verify FOLDER`):
  every byte of every data file against its digest.

Folders written before this record existed (no `folder_id` in the sidecar) load without these
checks; a data file that carries a folder id under a sidecar without one is refused (mixed).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import secrets
from pathlib import Path
from typing import Any

FOLDER_ID_KEY = "folder_id"
CHUNK = 8 << 20


def new_folder_id() -> str:
    """A fresh random folder id (128 bits, hex)."""
    return secrets.token_hex(16)


def record(sidecar: dict, folder_id: str, digests: dict[str, str]) -> None:
    """Add the folder id and the data files' digests to `sidecar` (in place, folder id near the top)."""
    items = list(sidecar.items())
    sidecar.clear()
    for key, value in items:
        sidecar[key] = value
        if key == "format_version":
            sidecar[FOLDER_ID_KEY] = folder_id
    sidecar.setdefault(FOLDER_ID_KEY, folder_id)
    for name, digest in digests.items():
        sidecar["files"][name]["sha256"] = digest


def mapping_sha256(buffer: Any) -> str:
    """sha256 of a whole mapping; pages of an mmap are handed back after each chunk (RSS stays flat)."""
    digest = hashlib.sha256()
    if buffer is None:
        return digest.hexdigest()
    view = memoryview(buffer)
    try:
        for start in range(0, len(view), CHUNK):
            digest.update(view[start:start + CHUNK])
            if isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
                with contextlib.suppress(OSError, ValueError):
                    buffer.madvise(mmap.MADV_DONTNEED, start, min(CHUNK, len(view) - start))
    finally:
        view.release()
    return digest.hexdigest()


def check_header(sidecar: dict, name: str, metadata: dict | None, data_bytes: int) -> str | None:
    """The problem with data file `name` given its safetensors `__metadata__` and data-area size, or None."""
    expected = sidecar.get(FOLDER_ID_KEY)
    found = (metadata or {}).get(FOLDER_ID_KEY)
    if expected is None and found is None:
        return None  # a folder written before folder ids: nothing to compare
    if found != expected:
        return (f"{name} belongs to another conversion than checkpoint.json (folder id {found or 'none'}, "
                f"checkpoint.json has {expected or 'none'}); the folder mixes files of different conversions")
    info = sidecar["files"].get(name)
    if info is not None and info["bytes"] != data_bytes:
        return f"{name} holds {data_bytes} bytes of data; checkpoint.json records {info['bytes']}"
    return None


def check_digest(sidecar: dict, name: str, actual: str) -> str | None:
    """The problem if data file `name`'s sha256 `actual` differs from the recorded one, else None."""
    expected = sidecar["files"].get(name, {}).get("sha256")
    if expected is not None and expected != actual:
        return f"{name}: sha256 {actual} differs from the {expected} recorded in checkpoint.json (the file is corrupt)"
    return None


def has_record(sidecar: dict) -> bool:
    """Whether the sidecar carries an integrity record (folder id and every data file's digest)."""
    return FOLDER_ID_KEY in sidecar and all("sha256" in info for info in sidecar["files"].values())


def verify_folder(folder: str | os.PathLike) -> list[str]:
    """Check a converted folder without its source: every data file's digest, folder id and size.

    Args:
        folder: a folder written by `convert_checkpoint`.

    Returns:
        The problems found, one line each; empty means every data file is exactly as written.

    Raises:
        MalformedCheckpoint if checkpoint.json is missing or invalid; ConvertError if the folder
        was written without an integrity record (an older version: use `verify SRC DST`).
    """
    from .errors import ConvertError, MalformedCheckpoint
    from .load import open_data_file, read_sidecar  # here: convert.load imports this module's checks

    folder = Path(folder)
    sidecar = read_sidecar(folder)
    if not has_record(sidecar):
        raise ConvertError(f"{folder} was written without digests (by an older ckpt-convert); "
                           "check it against its source with `verify SRC DST`")
    problems = []
    for name in sidecar["files"]:
        try:
            file = open_data_file(folder, name)
        except MalformedCheckpoint as exc:
            problems.append(str(exc))
            continue
        try:
            problem = check_header(sidecar, name, file.metadata, file.data_bytes)
            if problem is None:  # a file of another conversion fails its digest too: say the cause only
                problem = check_digest(sidecar, name, mapping_sha256(file.map))
            if problem is not None:
                problems.append(problem)
        finally:
            file.close()
    return problems
