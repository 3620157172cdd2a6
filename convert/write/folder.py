"""Write a plan to a folder atomically: a hidden temp folder beside the destination, then rename.

A failure at any point removes the temp folder; the destination is either absent, the old one
untouched, or complete. The source is only ever read.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import ConvertError, OutputExists
from ..schema import SIDECAR_NAME
from .plan import Plan
from .safetensors_io import write_safetensors

PT_METADATA = {"format": "pt"}


def sidecar_bytes(sidecar: dict) -> bytes:
    return (json.dumps(sidecar, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_folder(plan: Plan, dst: Path, *, overwrite: bool = False, copy_files: list[Path] = (),
                 before_sidecar: Callable[[], None] | None = None) -> None:
    """Write `plan` (and copies of `copy_files`, e.g. a model's config.json) as the folder `dst`.

    `before_sidecar` runs after the data files are written and before checkpoint.json is (the
    source hash, computed meanwhile on a thread, is filled in there).
    """
    if dst.exists() and not overwrite:
        raise OutputExists(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    if dst.exists() and not dst.is_dir():
        raise ConvertError(f"{dst} exists and is not a folder")
    created = _make_parents(dst.parent)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        try:
            tmp.mkdir()
        except FileNotFoundError:  # a parallel conversion that failed removed the parent it had made: remake it
            created += _make_parents(dst.parent)
            tmp.mkdir()
        for name, entries in plan.files.items():
            with open(tmp / name, "wb") as out:
                write_safetensors(out, entries, PT_METADATA)
        for name, data in plan.indexes.items():
            (tmp / name).write_bytes(data)
        for path in copy_files:
            shutil.copyfile(path, tmp / path.name)
        if before_sidecar is not None:
            before_sidecar()
        (tmp / SIDECAR_NAME).write_bytes(sidecar_bytes(plan.sidecar))
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _make_parents(folder: Path) -> list[Path]:
    """Create the missing parents of the destination; returns those this call created, top first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:  # another conversion (a parallel migrate worker) made it first: fine
            if not path.is_dir():
                raise ConvertError(f"cannot create {path}: a file of that name exists") from None
        except OSError as exc:
            raise ConvertError(f"cannot create {path}: {exc.strerror}") from None
    return created


def _replace(tmp: Path, dst: Path) -> None:
    if not dst.exists():
        os.rename(tmp, dst)
        return
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
