"""Finding the checkpoints under a folder, by content: zip with data.pkl, legacy torch, pickle.

A Hugging Face model folder (config.json + pytorch_model.bin or its shards) is one job for the
whole folder, and so are a torch.distributed.checkpoint folder (`.metadata` + `*.distcp`) and a
Trainer/Accelerate checkpoint folder. Files whose first bytes are not a checkpoint's are counted, not converted.
The walk is a generator: the first jobs start converting while the rest of a huge tree is still
being listed. Only regular files are ever opened: FIFOs, sockets and devices are counted and
skipped after an `lstat` (opening a FIFO would block forever).
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvertError
from ..read.dcp import METADATA_NAME, dcp_files
from .frameworks import fingerprint, framework_of
from .hf import INDEX, hf_checkpoint_files, is_hf_folder

CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar", ".model", ".pk"})


@dataclass(frozen=True)
class Job:
    kind: str  # "file", "hf", "dcp" (a torch.distributed.checkpoint folder) or "framework" (frameworks.py)
    source: Path
    rel: str  # source path relative to the migration root (posix)
    output_rel: str  # output folder relative to the destination root (posix)
    size: int
    mtime_ns: int = 0  # newest mtime of the job's input files: with `size`, what lets a re-run skip it


@dataclass
class WalkStats:
    """Counts the walker keeps while it streams jobs."""

    others: int = 0  # regular files that are not checkpoints (left alone)
    special: int = 0  # FIFOs, sockets, devices: never opened
    folders: int = 0


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def looks_like_checkpoint(path: Path) -> bool:
    """A file named like a checkpoint, or whose first bytes are a torch zip's or a pickle's.

    A file named like a checkpoint that turns out unreadable is reported as failed, not ignored.
    Call only for regular files (the walker checks with `lstat` first).
    """
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced by something else since the lstat
                return False
            head = f.read(2)
            if head == b"PK":
                try:
                    with zipfile.ZipFile(path) as zf:
                        return any(n.endswith("/data.pkl") for n in zf.namelist())
                except (zipfile.BadZipFile, OSError, ValueError):
                    return False
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # PROTO 0..5: a binary pickle


def _hf_job(folder: Path, rel_folder: str, names: list[str]) -> tuple[Job, int]:
    """The job for a Hugging Face folder, and how many of its files are not weights."""
    try:
        weights = {p.name for p in hf_checkpoint_files(folder)} | {INDEX}
        stats = [(folder / n).stat() for n in weights if (folder / n).is_file()]
        size, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    except (ConvertError, OSError):  # a bad index: the job reports it as failed
        weights, size, mtime = set(), 0, 0
    out_rel = rel_folder if rel_folder != "." else folder.resolve().name or "model"  # never the root itself
    return Job("hf", folder, rel_folder, out_rel, size, mtime), sum(1 for n in names if n not in weights)


def _dcp_job(folder: Path, rel_folder: str, names: list[str]) -> tuple[Job, int]:
    """The job for a DCP folder, and how many of its files are not part of the checkpoint."""
    try:
        files = dcp_files(folder)
        stats = [p.stat() for p in files]
        size, mtime = sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)
    except OSError:  # a file vanished under the walk: the job reports what is wrong
        files, size, mtime = [], 0, 0
    out_rel = rel_folder if rel_folder != "." else folder.resolve().name or "checkpoint"  # never the root itself
    return Job("dcp", folder, rel_folder, out_rel, size, mtime), len(names) - len(files)


def _framework_job(folder: Path, rel_folder: str) -> Job:
    try:
        size, mtime = fingerprint(folder)
    except OSError:  # a file vanished under the walk: the job reports what is wrong
        size, mtime = 0, 0
    out_rel = rel_folder if rel_folder != "." else folder.resolve().name or "checkpoint"  # never the root itself
    return Job("framework", folder, rel_folder, out_rel, size, mtime)


def iter_jobs(src: Path, stats: WalkStats, skip: Path | None = None,
              on_folder: Callable[[str], None] | None = None) -> Iterator[Job]:
    """Yield every job under `src`, folder by folder in a stable order (depth first, sorted names).

    Args:
        src: the folder to walk. Symlinks are never followed.
        stats: filled in as the walk goes (other files, special files, folders).
        skip: a folder never entered (the destination, when it lies inside the source).
        on_folder: called with each folder's relative path before its jobs are yielded.
    """
    skip_id = None
    if skip is not None:
        try:
            st = os.stat(skip)
            skip_id = (st.st_dev, st.st_ino)
        except OSError:
            pass
    pending = [(src, ".")]
    while pending:
        folder, rel_folder = pending.pop()
        stats.folders += 1
        if on_folder is not None:
            on_folder(rel_folder)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # vanished or unreadable: nothing under it can be converted
        subfolders, names, regular = [], [], []
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not entry.name.startswith(".ckpt-convert") and (st.st_dev, st.st_ino) != skip_id:
                    subfolders.append(entry.name)
            elif stat.S_ISLNK(st.st_mode):
                names.append(entry.name)  # a symlinked file is counted, never followed
            elif stat.S_ISREG(st.st_mode):
                names.append(entry.name)
                regular.append((entry.name, st))
            else:
                stats.special += 1  # FIFO, socket, device: opening it could block or have effects
        if METADATA_NAME in names:  # a torch.distributed.checkpoint folder: one job, not descended into
            job, others = _dcp_job(folder, rel_folder, names)
            stats.others += others
            yield job
            continue
        pending.extend((folder / d, d if rel_folder == "." else f"{rel_folder}/{d}") for d in reversed(subfolders))
        if framework_of(folder, names):  # a Trainer/Accelerate checkpoint: one unit, its safe files copied
            yield _framework_job(folder, rel_folder)
            continue
        if is_hf_folder(folder):
            job, others = _hf_job(folder, rel_folder, names)
            stats.others += others
            yield job
            continue
        candidates = [(n, st) for n, st in regular
                      if _suffix(n) in CHECKPOINT_SUFFIXES or looks_like_checkpoint(folder / n)]
        stats.others += len(names) - len(candidates)
        stems: dict[str, int] = {}
        for name, _ in candidates:
            stems[_stem(name)] = stems.get(_stem(name), 0) + 1
        all_names = set(names) | set(subfolders)
        taken: set[str] = set()
        for name, st in candidates:
            stem = _stem(name)
            out = stem if stems[stem] == 1 and stem not in all_names else name + ".converted"
            while out in taken:
                out += "_"
            taken.add(out)
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            out_rel = out if rel_folder == "." else f"{rel_folder}/{out}"
            yield Job("file", folder / name, rel, out_rel, st.st_size, st.st_mtime_ns)


def find_jobs(src: Path, skip: Path | None = None) -> tuple[list[Job], int]:
    """All jobs under `src` in a stable order, and the number of other files seen (non-streaming form)."""
    stats = WalkStats()
    jobs = list(iter_jobs(src, stats, skip))
    return jobs, stats.others + stats.special
