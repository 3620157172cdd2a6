"""What a path under a tree is, for `scan` and `migrate` alike: a checkpoint file, a unit folder, or neither.

A *unit* is a folder that is one job as a whole (everything inside it, subfolders included, belongs
to its one output): a torch.distributed.checkpoint folder ("dcp"), a Trainer/Accelerate checkpoint
("framework"), a Hugging Face model folder ("hf"; sentence-transformers module subfolders included).
Precedence when a folder is several: dcp, framework, hf.

A DCP folder needs a non-empty `.metadata` *and* at least one `.distcp` part: a stray or empty
`.metadata` makes nothing a unit (it is then just a file, scanned by content).
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvertError
from .dcp_metadata import METADATA_NAME, dcp_files, rank_metadata_files

# names a file is taken for a checkpoint by (an unreadable one is reported, not ignored)
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar", ".model", ".pk"})
# inside a unit: names that are pickles whatever their bytes (".model" is sentencepiece's protobuf there)
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar", ".pk"})
UNIT_KINDS = ("dcp", "framework", "hf")
SKIPPED_FOLDERS = frozenset({".git"})  # version control (an HF clone's LFS store): not model files
HF_SINGLE = "pytorch_model.bin"
HF_INDEX = "pytorch_model.bin.index.json"
TRAINER_PICKLES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|training_args\.bin|rng_state(_\d+)?\.pth)$")
ACCELERATE_PICKLES = re.compile(r"^(random_states_\d+\.pkl|optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin|"
                                r"sampler(_\d+)?\.bin|dl_state_dict(_\d+)?\.bin|scaler\.pt|custom_checkpoint_\d+\.pkl)$")


def framework_of(names: list[str]) -> str | None:
    """"hf-trainer" or "accelerate" if a folder holding the files `names` is such a checkpoint, else None."""
    if "trainer_state.json" in names and any(TRAINER_PICKLES.match(n) for n in names):
        return "hf-trainer"
    if any(n.startswith("random_states_") and n.endswith(".pkl") for n in names) and \
            any(ACCELERATE_PICKLES.match(n) for n in names if not n.startswith("random_states_")):
        return "accelerate"
    return None


def is_hf_folder(folder: Path) -> bool:
    """`config.json` and `pytorch_model.bin` (or its shard index). The weights need only be there: one that is
    not a regular file (a FIFO) makes the folder an HF unit whose reading refuses it, not a stray folder."""
    return (folder / "config.json").is_file() and (os.path.lexists(folder / HF_SINGLE) or (folder / HF_INDEX).is_file())


def _head(path: Path, n: int = 4) -> bytes:
    """The first bytes of a regular file (b"" if it is not one or cannot be read): never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.pread(fd, n, 0)
    except OSError:
        return b""
    finally:
        os.close(fd)


def pickle_bytes(head: bytes) -> bool:
    """A binary pickle (PROTO 0..5: legacy torch files too) or a zip (a torch zip checkpoint)."""
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (len(head) >= 2 and head[0] == 0x80 and head[1] <= 5)


def is_pickle(path: Path) -> bool:
    """Inside a unit: a file that must be converted, never copied (by name or by its first bytes)."""
    return path.suffix.lower() in PICKLE_SUFFIXES or pickle_bytes(_head(path))


def looks_like_checkpoint(path: Path) -> bool:
    """Outside units: a file named like a checkpoint, or a torch zip (a `data.pkl` member) or a binary pickle."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    head = _head(path)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("/data.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
    return pickle_bytes(head)


def is_dcp_unit(folder: Path, names: list[str] | None = None) -> bool:
    """A DCP folder: a non-empty regular `.metadata` and at least one regular `*.distcp` file."""
    names = names if names is not None else _file_names(folder)
    try:
        st = os.lstat(folder / METADATA_NAME)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return False
    return any(n.endswith(".distcp") and os.path.isfile(folder / n) and not os.path.islink(folder / n) for n in names)


def _file_names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def unit_kind(folder: Path, names: list[str] | None = None) -> str | None:
    """"dcp", "framework" or "hf" if `folder` is a unit (`names`: its non-folder entries, if known), else None."""
    names = names if names is not None else _file_names(folder)
    if METADATA_NAME in names and is_dcp_unit(folder, names):
        return "dcp"
    if framework_of(names):
        return "framework"
    if is_hf_folder(folder):
        return "hf"
    return None


def classify(path: Path) -> str | None:
    """"file" (a checkpoint file), a unit kind, or None (neither). Symlinks are classified by what they name."""
    if path.is_dir():
        return unit_kind(path)
    if path.is_file() and looks_like_checkpoint(path):
        return "file"
    return None


@dataclass
class Entry:
    """One entry of a unit folder, as the unit sees it."""

    name: str
    path: Path  # what is read (a symlink's resolved target)
    what: str  # "file", "folder" or "skip"
    reason: str = ""
    size: int = 0
    mtime_ns: int = 0


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_link(path: Path, root: Path) -> tuple[Path | None, str]:
    """(target, "") for a symlink to a regular file inside `root`, else (None, why it is skipped)."""
    real = os.path.realpath(path)
    if not inside(real, os.path.realpath(root)):
        return None, "symlink leading outside the source folder (not followed)"
    try:
        st = os.stat(real)
    except OSError:
        return None, "dangling symlink"
    if not stat.S_ISREG(st.st_mode):
        return None, "symlink to a folder or special file (not followed)"
    return Path(real), ""


def entries(folder: Path, root: Path) -> Iterator[Entry]:
    """The entries of `folder`, sorted by name, symlinks resolved by the rules above."""
    try:
        with os.scandir(folder) as it:
            listed = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise ConvertError(f"{folder}: cannot list the folder: {exc.strerror}") from None
    for e in listed:
        st = e.stat(follow_symlinks=False)
        path = Path(e.path)
        if stat.S_ISLNK(st.st_mode):
            target, why = resolve_link(path, root)
            if target is None:
                yield Entry(e.name, path, "skip", why)
                continue
            path, st = target, os.stat(target)
        if stat.S_ISDIR(st.st_mode):
            if e.name in SKIPPED_FOLDERS:
                yield Entry(e.name, path, "skip", "version-control folder (not copied)")
            else:
                yield Entry(e.name, path, "folder")
        elif stat.S_ISREG(st.st_mode):
            yield Entry(e.name, path, "file", size=st.st_size, mtime_ns=st.st_mtime_ns)
        else:
            yield Entry(e.name, path, "skip", "FIFO, socket or device (never opened)")


def fingerprint(folder: Path, root: Path) -> tuple[int, int]:
    """(total size, newest mtime) of every file of the unit (subfolders included): what lets a re-run skip it."""
    size = mtime = 0
    pending = [folder]
    while pending:
        for e in entries(pending.pop(), root):
            if e.what == "file":
                size, mtime = size + e.size, max(mtime, e.mtime_ns)
            elif e.what == "folder":
                pending.append(e.path)
    return size, mtime




@dataclass(frozen=True)
class Found:
    """One thing to convert or scan: a checkpoint file ("file") or a unit folder (a unit kind)."""

    kind: str
    path: Path
    rel: str  # relative to the walked root (posix); "." for the root itself
    size: int  # with mtime_ns: the fingerprint a re-run compares (every file of a unit)
    mtime_ns: int


@dataclass
class WalkStats:
    """What the walk saw besides checkpoints."""

    others: int = 0  # regular files that are not checkpoints (left alone)
    special: int = 0  # FIFOs, sockets, devices: never opened
    folders: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rel, reason): symlinks not followed, ...


def _join(rel_folder: str, name: str) -> str:
    return name if rel_folder == "." else f"{rel_folder}/{name}"


def walk(src: Path, stats: WalkStats, skip: Path | None = None,
         on_folder: Callable[[str], None] | None = None) -> Iterator[Found]:
    """Every checkpoint file and unit under `src`, folder by folder in a stable order (depth first, sorted).

    A unit is yielded once and not descended into: everything in it belongs to it. Symlinks to files
    inside `src` are followed (an HF cache snapshot links every file into `blobs/`); other symlinks are
    recorded in `stats.skipped` with the reason. In an HF cache folder (`blobs/` beside `snapshots/`),
    `blobs/` itself is not walked: its files are reached, by their real names, through the snapshots.

    Args:
        src: the folder to walk. stats: filled in as the walk goes.
        skip: a folder never entered (the destination, when it lies inside the source).
        on_folder: called with each plain (non-unit) folder's relative path before its files are yielded.
    """
    skip_id = None
    if skip is not None:
        try:
            st = os.stat(skip)
            skip_id = (st.st_dev, st.st_ino)
        except OSError:
            pass
    try:
        kind = unit_kind(src)
    except (ConvertError, OSError):
        kind = None
    if kind is not None:
        yield _unit(kind, src, ".", src)
        return
    pending = [(src, ".")]
    while pending:
        folder, rel_folder = pending.pop()
        stats.folders += 1
        try:
            listed = list(entries(folder, src))
        except ConvertError:
            continue  # vanished or unreadable: nothing under it can be converted
        folders, files = [], []
        for e in listed:
            rel = _join(rel_folder, e.name)
            if e.what == "folder":  # never a symlink: entries() does not follow links to folders
                try:
                    st = os.stat(e.path)
                    if skip_id is not None and (st.st_dev, st.st_ino) == skip_id:
                        continue
                except OSError:
                    continue
                folders.append(e)
            elif e.what == "file":
                files.append(e)
            elif e.reason.startswith("FIFO"):
                stats.special += 1
            else:
                stats.skipped.append((rel, e.reason))
        if {"blobs", "snapshots"} <= {e.name for e in folders}:
            folders = [e for e in folders if e.name != "blobs"]
        plain = []
        for e in folders:  # units first (whole, not descended), then plain folders depth first
            try:
                kind = unit_kind(e.path)
            except (ConvertError, OSError):
                kind = None
            if kind is not None:
                yield _unit(kind, e.path, _join(rel_folder, e.name), src)
            else:
                plain.append(e)
        if on_folder is not None:
            on_folder(rel_folder)
        pending.extend((e.path, _join(rel_folder, e.name)) for e in reversed(plain))
        for e in files:
            if looks_like_checkpoint(e.path):
                yield Found("file", e.path, _join(rel_folder, e.name), e.size, e.mtime_ns)
            else:
                stats.others += 1


def _unit(kind: str, folder: Path, rel: str, root: Path) -> Found:
    try:
        size, mtime = fingerprint(folder, root)
    except (ConvertError, OSError):  # a file vanished under the walk: the job reports what is wrong
        size, mtime = 0, 0
    return Found(kind, folder, rel, size, mtime)


def unit_sources(kind: str | None, folder: Path, root: Path) -> list[Path]:
    """What `scan` reads of a unit, file by file: every pickle in it (subfolders included) and each DCP folder."""
    found: list[Path] = [folder] if kind == "dcp" else []
    # a DCP folder is scanned as one checkpoint: .metadata, its rank-local copies and every part
    parts = {p.name for p in dcp_files(folder) + rank_metadata_files(folder)} if kind == "dcp" else set()
    for e in entries(folder, root):
        if e.what == "folder":
            found += unit_sources(unit_kind(e.path), e.path, root)
        elif e.what == "file" and e.name not in parts and is_pickle(e.path):
            found.append(e.path)
    return found
