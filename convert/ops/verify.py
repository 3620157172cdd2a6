"""Checking a converted folder: its own integrity record (`verify_folder`), or against its Source (`verify_source`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConvertError, CorruptFolder, MalformedCheckpoint
from ..primitives.hashing import sha256_path
from ..primitives.source import not_regular
from ..sidecar.integrity import SEAL_KEY, check_digest, check_header, has_record
from ..sidecar.safetensors_file import open_data_file  # torch-free: `verify FOLDER` imports no torch
from ..sidecar.schema import inside_folder, read_sidecar
from ..sources.base import Source
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
            actual = sha256_path(inside_folder(folder, path)) if path.is_file() else None
        except (ConvertError, OSError):  # not inside the folder, not a regular file, unreadable
            actual = None
        if actual is None:
            why = not_regular(path) or "resolves outside the folder (a symbolic link)"
            problems.append(f"{name} (copied into the folder) {why}")
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
                problem = check_digest(sidecar, name, file.sha256())
            if problem is not None:
                problems.append(problem)
        except ConvertError as exc:  # cut short or replaced while it was being hashed
            problems.append(str(exc))
        finally:
            file.close()
    return problems


def verify_source(source: Source, folder: str | os.PathLike) -> list[str]:
    """Differences between the opened `source` and the converted `folder`: the tree (values and sharing)
    and the provenance the sidecar records (format, sha256, and each part's name, size and sha256).

    Returns:
        One line per difference; empty means equivalent. The folder's own digests are `verify_folder`'s.
    """
    from ..load import load_checkpoint  # torch: here, not at import, so convert/scan run without it
    from ..read.materialize import materialize
    from .compare import compare_trees

    folder = Path(folder)
    try:
        recorded = read_sidecar(folder, check_seal=True)["source"]
        diffs = []
    except CorruptFolder as exc:  # edited after it was written: what else it says is compared below
        recorded = read_sidecar(folder)["source"]
        diffs = [f"<folder>: {exc}"]
    original = materialize(source.root)
    expected = {**source.provenance(), **source.seal()}  # every byte read: unchanged, and its sha256
    if "parts" in expected or "parts" in recorded:
        if recorded.get("format") != expected["format"] or recorded.get("parts") != expected.get("parts") or \
                recorded.get("sha256") != expected["sha256"]:
            parts, had = expected.get("parts") or [], recorded.get("parts") or []
            if not isinstance(had, list) or not all(isinstance(p, dict) for p in had):
                had = []
            changed = sorted({p["name"] for p in parts} ^ {p.get("name") for p in had}
                             | {p["name"] for p in parts if p not in had}) or [expected["name"]]
            diffs.append(f"<source>: {folder} was converted from different files "
                         f"({', '.join(map(str, changed))[:200]} differ)")
    elif recorded.get("sha256") != expected.get("sha256"):
        diffs.append(f"<source>: {folder} was converted from a different file (sha256 differs)")
    return diffs + compare_trees(original, load_checkpoint(folder, map_location="cpu"))  # compared on the CPU, wherever saved
