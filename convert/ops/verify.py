"""Checking a converted folder: its own integrity record (no source needed)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConvertError, CorruptFolder, MalformedCheckpoint
from ..sidecar.integrity import SEAL_KEY, check_digest, check_header, file_sha256, has_record, mapping_sha256
from ..sidecar.safetensors_file import open_data_file  # torch-free: `verify FOLDER` imports no torch
from ..sidecar.schema import inside_folder, read_sidecar
from .folder_check import FolderCheck


def verify_folder(folder: str | os.PathLike) -> FolderCheck:
    """Check a converted folder without its source: every data file's digest, folder id and size.

    Args:
        folder: a folder written by `convert_checkpoint`.

    Returns:
        A FolderCheck: true (`.ok`) when every data file is exactly as written; its `problems` (one line
        each) otherwise. It iterates over the problems and equals `[]` when there are none, as the list
        it used to be.

    Raises:
        MalformedCheckpoint if checkpoint.json is missing or invalid; ConvertError if the folder
        was written without an integrity record (an older version: use `verify SRC DST`).
    """
    folder = Path(folder)
    return FolderCheck(folder, tuple(_problems(folder)))


def _problems(folder: Path) -> list[str]:
    try:
        sidecar = read_sidecar(folder, check_seal=True)
    except CorruptFolder as exc:  # edited: what it now says cannot be trusted to check the rest against
        return [str(exc)]
    if not has_record(sidecar):
        raise ConvertError(f"{folder} was written without digests (by an older ckpt-convert); "
                           "check it against its source with `verify SRC DST`")
    problems = []
    for name, expected in sidecar.get(SEAL_KEY, {}).get("copied", {}).items():
        path = folder / name
        try:
            actual = file_sha256(inside_folder(folder, path)) if path.is_file() else None
        except (MalformedCheckpoint, OSError):
            actual = None
        if actual is None:
            problems.append(f"{name} (copied into the folder) is missing")
        elif actual != expected:
            problems.append(f"{name}: sha256 {actual} differs from the {expected} recorded in checkpoint.json "
                            "(the copied file was changed)")
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
