"""Which existing destination a run may replace: the one ownership rule of every writer.

`build_folder` (used by convert, save_checkpoint, DCP, migrate's jobs and framework units, and
the Lightning plugin) asks `check_replaceable` before it swaps a new folder in with --overwrite. An
existing folder may be replaced only if

- it is not a mount point, not the current folder (nor holds it), and neither is nor holds a
  source of this run or a source file's folder (paths resolved);
- it is a ckpt-convert output: its checkpoint.json parses, validates and (if sealed) is unedited,
  and every data file carries its folder id and recorded size (`integrity.check_header`); or it is
  empty; or, for a framework unit (the source is a folder), each entry is a converted sub-folder
  of that kind or a file of the same name in the source folder;
- it holds nothing that output did not write: every entry is a data file, an index or a copied
  file its sidecar lists, or the sidecar itself; or a shard `export` wrote (its header carries the
  export mark), or the index beside such shards.

`export`'s single-file OUT is checked by the same function (`file=True`): the existing path must be a
regular file whose header carries the export mark (and neither the source nor its folder).

Anything else raises DestinationNotOwned naming what is in the way; nothing is touched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConvertError, DestinationNotOwned
from ..sidecar.integrity import FOLDER_ID_KEY, check_header, copied_names, header_identity
from ..sidecar.schema import SIDECAR_NAME, read_sidecar
from ..sign.sign import SIGNATURE_NAME

SHOWN = 3  # names of files in the way quoted in the message
EXPORT_MARK_KEY = "ckpt_convert_export"  # safetensors metadata key marking a file `export` wrote (value: the version)
EXPORT_INDEX_NAME = "model.safetensors.index.json"


def check_replaceable(dst: Path, sources: Sequence[str | os.PathLike] = (), *, file: bool = False) -> None:
    """Raise DestinationNotOwned unless the existing folder `dst` may be replaced by this run's output.

    Args:
        dst: the destination (nothing to check if it does not exist).
        sources: the files or folders this run reads (never replaced, nor any folder holding them).
        file: the output is one file (export's OUT), which may replace only a file an export wrote.
    """
    if not os.path.lexists(dst):
        return
    real = Path(os.path.realpath(dst))
    if os.path.ismount(real):
        raise DestinationNotOwned(f"{dst} is a mount point; refusing to replace it: write into a new folder inside it")
    cwd = _current_folder()
    if cwd is not None and _within(cwd, real):
        raise DestinationNotOwned(f"{dst} is the current folder (or holds it); refusing to replace it: "
                                  "name a new output folder")
    for source in sources:
        held = Path(os.path.realpath(source))
        protected = [held] if held.is_dir() else [held, held.parent]
        if any(_within(p, real) for p in protected):
            raise DestinationNotOwned(f"{dst} is or holds the source {source} or its folder; refusing to replace "
                                      "it: write the output to another folder")
    if file:
        if not (_plain_file(dst) and is_export(dst)):
            raise DestinationNotOwned(f"{dst} is not a file `ckpt-convert export` wrote; refusing to replace it: "
                                      "move it away or write the output to another file")
        return
    if dst.is_symlink() or not dst.is_dir():
        raise not_a_folder(dst)
    unit_sources = [Path(s) for s in sources if Path(s).is_dir()]
    in_way = _foreign_entries_of_one_folder(dst, unit_sources)
    if in_way:
        shown = ", ".join(in_way[:SHOWN]) + (f" and {len(in_way) - SHOWN} more" if len(in_way) > SHOWN else "")
        raise DestinationNotOwned(f"{dst} holds files ckpt-convert did not write ({shown}); refusing to replace it: "
                                  "move them away or write the output to another folder")


def not_a_folder(dst: Path) -> ConvertError:
    """The one wording of a destination in the way that is not a folder (a symlink is never followed nor replaced)."""
    if os.path.islink(dst):
        return ConvertError(f"{dst} is a symbolic link; it is never followed nor replaced: give the folder's own "
                            f"path ({os.path.realpath(dst)}) or a new folder name")
    return ConvertError(f"{dst} exists and is not a folder; give a new folder name")


def check_outside_sources(dst: Path, sources: Sequence[str | os.PathLike] = ()) -> None:
    """Raise ConvertError if the output folder `dst` would lie inside a source folder (paths resolved).

    A folder source (HF, Trainer, DCP) is read whole, so an output inside it would be read back into
    itself (its temporary folder copied into itself, level after level, until the path overflows), and
    the source would be written. A file's folder is not protected here: `x.pt` → `x/` beside it is usual."""
    real = Path(os.path.realpath(dst))
    for source in sources:
        held = Path(os.path.realpath(source))
        if held.is_dir() and _within(real, held):
            what = "is the source folder" if real == held else f"is inside the source folder {source}"
            raise ConvertError(f"{dst} {what}; nothing under the source is written: "
                               "write the output to a folder outside it")


SWAP_RETRIES = 3


def _foreign_entries_of_one_folder(dst: Path, unit_sources: Sequence[Path]) -> list[str]:
    """`foreign_entries(dst)`, read from one folder: another run's overwrite may swap `dst` for its new
    output while this reads it (a check made before the lock is taken), and files read half from each
    would look like a folder mixing two conversions. If `dst` is another folder after the check than
    before, look again; a folder that stays the same is judged as it is."""
    for attempt in range(SWAP_RETRIES + 1):
        before = _folder_identity(dst)
        try:
            return foreign_entries(dst, unit_sources)
        except (DestinationNotOwned, FileNotFoundError):  # FileNotFoundError: an entry went with the swap
            after = _folder_identity(dst)
            if after is None:  # moved aside by another run's replace: nothing of the user's to protect here
                return []
            if after == before or attempt == SWAP_RETRIES:
                raise
    raise AssertionError("unreachable")


def _folder_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def foreign_entries(folder: Path, unit_sources: Sequence[Path] = ()) -> list[str]:
    """The entries of `folder` that a ckpt-convert output there did not write (empty: it may be replaced).

    Raises DestinationNotOwned if `folder` has a checkpoint.json that does not check out.
    """
    names = sorted(os.listdir(folder))
    if SIDECAR_NAME in names:
        owned = output_names(folder)
        return [n for n in names if n not in owned or not _plain_file(folder / n)]
    exported = _exported(folder, names)
    in_way = []
    for name in names:  # a framework unit's output: converted sub-folders and copies of the unit's files
        if name in exported:
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink() and (path / SIDECAR_NAME).is_file():
            if any(_plain_file(s / name) for s in unit_sources):
                in_way += [f"{name}/{n}" for n in foreign_entries(path)]
                continue
        elif _plain_file(path) and any(_plain_file(s / name) for s in unit_sources):
            continue
        in_way.append(name + ("/" if path.is_dir() and not path.is_symlink() else ""))
    return in_way


def output_names(folder: Path) -> set[str]:
    """The names a ckpt-convert output in `folder` wrote, after checking it is one (else DestinationNotOwned)."""
    try:
        sidecar = read_sidecar(folder, check_seal=True)
    except ConvertError as exc:
        raise DestinationNotOwned(f"{folder} is not an intact ckpt-convert output ({exc}); refusing to replace it: "
                                  "move it away or write the output to another folder") from None
    for name, info in sidecar["files"].items():
        found = header_identity(folder / name) if _plain_file(folder / name) else None
        if found is None:
            problem = f"{name} is missing or not a safetensors file"
        elif FOLDER_ID_KEY not in sidecar and found[1] != info["bytes"]:  # older folders: at least the size
            problem = f"{name} holds {found[1]} bytes of data; checkpoint.json records {info['bytes']}"
        else:
            problem = check_header(sidecar, name, found[0], found[1])
        if problem is not None:
            raise DestinationNotOwned(f"{folder} is not an intact ckpt-convert output ({problem}); refusing to "
                                      "replace it: move it away or write the output to another folder")
    indexes = {sd["file"] for sd in sidecar["state_dicts"] if sd.get("file", "").endswith(".index.json")}
    return {SIDECAR_NAME, SIGNATURE_NAME, *sidecar["files"], *indexes, *copied_names(sidecar)}  # the signature: ours too


def _exported(folder: Path, names: list[str]) -> set[str]:
    """The entries of `folder` that `export` wrote: marked shards, and the index beside them."""
    shards = {n for n in names if n.endswith(".safetensors") and _plain_file(folder / n) and is_export(folder / n)}
    index = {EXPORT_INDEX_NAME} if shards and _plain_file(folder / EXPORT_INDEX_NAME) else set()
    return shards | index


def is_export(path: Path) -> bool:
    """Whether `path` is what `export` wrote: a regular file whose safetensors header carries the export
    mark, or a folder of only such shards and their index."""
    if _plain_file(path):
        found = header_identity(path)
        return found is not None and found[0] is not None and EXPORT_MARK_KEY in found[0]
    if path.is_symlink() or not path.is_dir():
        return False
    entries = list(path.iterdir())
    weights = [p for p in entries if p.suffix == ".safetensors"]
    return bool(weights) and all(is_export(p) for p in weights) and \
        all(p.suffix == ".safetensors" or (p.name == EXPORT_INDEX_NAME and _plain_file(p)) for p in entries)


def _current_folder() -> Path | None:
    """The resolved current folder; None if it was deleted (a shell left in it): no destination holds it."""
    try:
        return Path(os.path.realpath(os.getcwd()))
    except FileNotFoundError:
        return None


def _plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _within(path: Path, folder: Path) -> bool:
    """Whether the resolved `path` is `folder` or lies under it."""
    return path == folder or folder in path.parents
