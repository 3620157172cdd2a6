"""Write a plan to a folder: atomically, exclusively, durably, and with its own integrity record.

Steps (each named as a fault-injection point, see `primitives.faults`):
1. In a marked temporary folder beside the destination (`temp.TempFolder`), write the data files,
   each hashed as it is written (sha256, `OutputDigest`) and fsync'd; then index
   and copied files.                                                                   after-data
2. checkpoint.json last, with the folder id and the digests (`integrity.record`), sealed
   (`integrity.seal`: the copied files' digests and its own).                           after-sidecar
3. fsync the new folder.                                                               after-fsync
4. Install it: without overwrite, a rename that fails if the destination exists         before-rename
   (`rename_noreplace`: two runs, exactly one wins); with overwrite, under a lock beside the
   destination, an atomic exchange with the old folder (`rename_exchange`), so a complete
   destination exists at every instant; the old folder, now inside the temporary one,   after-exchange
   is removed with it. An existing destination is replaced only if `ownership.check_replaceable`
   allows it (a ckpt-convert output holding nothing else, not the source nor its folder).
5. fsync the parent folder, so the rename itself survives a power loss.

A failure at any point removes the temporary folder (and parents this call created); OS errors of
the user's environment (full disk, read-only file system, permissions) become CannotWrite.
The source is only ever read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import ENVIRONMENT_ERRNOS, CannotWrite, ConvertError, OutputExists, UnsupportedValue
from ..primitives import faults
from ..primitives.durable import (
    ExchangeUnsupported,
    fsync_dir,
    fsync_fd,
    rename_exchange,
    rename_noreplace,
    write_durable,
)
from ..primitives.hashing import OutputDigest, sha256_fd
from ..primitives.lock import WriterLock, remove_stale_lock
from ..primitives.temp import TempFolder, is_temporary, remove_stale_temporaries
from ..sidecar.integrity import FILE_NAME_KEY, FOLDER_ID_KEY, new_folder_id, record, seal
from ..sidecar.schema import SIDECAR_NAME, check_sidecar_size
from ..sign.context import sign_finished
from .ownership import check_outside_sources, check_replaceable, not_a_folder
from .plan import Plan
from .safetensors_io import KernelCopySources, write_safetensors

PT_METADATA = {"format": "pt"}
FAULT_ENV = faults.WRITE_ENV  # the test hooks of each step (primitives/faults.py)
FAULT_POINTS = faults.WRITE_POINTS
MAX_UNFINISHED_FILES = 4  # data files written, not yet hashed and fsync'd: each holds a descriptor until then


def write_folder(plan: Plan, dst: Path, *, overwrite: bool = False, copy_files: Iterable[Path] = (),
                 before_sidecar: Callable[[], None] | None = None,
                 kernel_copy_source: KernelCopySources = None, sources: Sequence[str | os.PathLike] = ()) -> None:
    """Write `plan` (and copies of `copy_files`, e.g. a model's config.json) as the folder `dst`.

    Args:
        plan: what to write; `plan.sidecar` gains the folder id and the data files' digests.
        dst: the destination folder; its missing parents are created.
        overwrite: replace an existing `dst` (atomically where the OS can swap two paths).
        copy_files: files copied into the folder as they are.
        before_sidecar: runs after the data files are written and before checkpoint.json is (the
            source hash, computed meanwhile on a thread, is filled in there).
        kernel_copy_source: the input file the plan's entry sources point into, if any (their bytes
            are copied file-to-file in the kernel).
        sources: the files or folders read (an overwrite never replaces them nor a folder holding them).

    Raises:
        OutputExists if `dst` exists (or appears meanwhile) and not `overwrite`; DestinationNotOwned if
        `overwrite` would replace what ckpt-convert did not write; DestinationBusy if another run is
        overwriting `dst`; CannotWrite for the environment's OS errors.
    """
    build_folder(Path(dst), lambda folder: _write_contents(plan, folder, list(copy_files), before_sidecar,
                                                         kernel_copy_source), overwrite=overwrite, sources=sources)


def build_folder(dst: Path, fill: Callable[[Path], None], *, overwrite: bool = False,
                 sources: Sequence[str | os.PathLike] = ()) -> None:
    """Create the folder `dst` with the guarantees of `write_folder`, its contents made by `fill(folder)`.

    `fill` writes into an empty folder that becomes `dst` atomically (exclusive create, or one atomic
    swap with `overwrite`), durably (the caller fsyncs its files; the folders are fsync'd here), with
    marked temporary folders and one-line errors for the environment's OS errors. An existing `dst`
    is replaced only if `ownership.check_replaceable(dst, sources)` allows it (checked before
    anything is written, and again just before the swap).
    """
    try:
        _build_folder(dst, fill, overwrite, sources)
    except OSError as exc:
        error = cannot_write(dst, exc)
        if error is None:
            raise
        raise error from None


def cannot_write(dst: Path, exc: OSError) -> CannotWrite | None:
    """The one-line error for an OS error met while writing `dst` if it is the user's environment (a full disk,
    permissions, the folder removed or moved meanwhile), else None (a bug: let it surface)."""
    if exc.errno in ENVIRONMENT_ERRNOS:
        return CannotWrite(dst, exc.strerror or str(exc))
    if exc.errno != errno.ENOENT:
        return None
    touched = [Path(os.fsdecode(f)) for f in (exc.filename, exc.filename2) if isinstance(f, (str, bytes))]
    if not os.path.isdir(dst.parent) or any(is_temporary(p) for f in touched for p in f.parents):
        return CannotWrite(dst, "its folder was removed or moved while it was being written")  # `rm -rf`, `mv`
    if any(is_temporary(f) for f in touched):  # the temporary folder itself could not be made (/proc refuses)
        return CannotWrite(dst, exc.strerror or str(exc))
    return None


def _build_folder(dst: Path, fill: Callable[[Path], None], overwrite: bool,
                  sources: Sequence[str | os.PathLike]) -> None:
    if overwrite:
        check_replaceable(dst, sources)  # first: refuse `.`, a mount point or a user's folder before anything
    check_outside_sources(dst, sources)  # a folder source is read whole: never write into it
    remove_stale_temporaries(dst.parent, dst.name)  # first: it may put back an old folder a killed run moved aside
    if not overwrite:
        remove_stale_lock(dst)  # an overwriting run takes (and then removes) the lock anyway
    if os.path.islink(dst):  # never followed nor replaced: --overwrite would not help
        raise not_a_folder(dst)
    if os.path.lexists(dst) and not overwrite:  # early and friendly; the final rename decides
        raise OutputExists.for_path(dst)
    if os.path.lexists(dst) and not dst.is_dir():
        raise not_a_folder(dst)
    with parents_made(dst.parent) as created, WriterLock(dst) if overwrite else contextlib.nullcontext():
        try:
            temp = TempFolder.create(dst)
        except FileNotFoundError:  # a parallel conversion that failed removed the parent it had made
            created += _make_parents(dst.parent)
            temp = TempFolder.create(dst)
        try:
            fill(temp.build)
            sign_finished(temp.build)  # signing asked for (convert.sign.signing): part of the atomic folder
            faults.point("before-rename")
            if overwrite:
                check_replaceable(dst, sources)  # again: files may have been added meanwhile
            _install(temp, dst, overwrite)
            fsync_dir(dst.parent)
        finally:
            temp.remove()


@contextlib.contextmanager
def parents_made(folder: Path) -> Iterator[list[Path]]:
    """Create `folder`'s missing parents (and itself); if the block fails, remove those it created (while
    empty), so a failed write leaves nothing. Yields the list of created folders (the block may add to it)."""
    created = _make_parents(folder)
    try:
        yield created
    except BaseException:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                break
        raise


def _write_contents(plan: Plan, folder: Path, copy_files: list[Path], before_sidecar: Callable[[], None] | None,
                    kernel_copy_source: KernelCopySources) -> None:
    folder_id = new_folder_id()
    metadata = {**PT_METADATA, FOLDER_ID_KEY: folder_id}
    # Each data file is hashed as it is written (OutputDigest), then fsync'd on a helper thread while the next is written.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as finisher:
        pending: dict[str, concurrent.futures.Future[str]] = {}
        unfinished: collections.deque[concurrent.futures.Future[str]] = collections.deque()
        try:
            for name, entries in plan.files.items():
                with open(folder / name, "xb+") as out:  # readable: hashed back through a dup of its fd
                    digest = OutputDigest(os.dup(out.fileno()))  # hashes it as it is written
                    try:
                        write_safetensors(out, entries, {**metadata, FILE_NAME_KEY: name},
                                          kernel_copy_source=kernel_copy_source,
                                          progress=digest.written)
                    except BaseException:
                        digest.cancel()
                        os.close(digest.fd)
                        raise
                    pending[name] = finisher.submit(_hash_and_sync, digest)
                    unfinished.append(pending[name])
                    while len(unfinished) > MAX_UNFINISHED_FILES:  # bounded descriptors, however many shards
                        unfinished.popleft().result()
            digests = {name: future.result() for name, future in pending.items()}
        finally:
            for future in pending.values():  # on failure: close the fds of hashes that still run
                with contextlib.suppress(BaseException):
                    future.result()
    for name, data in plan.indexes.items():
        write_durable(folder / name, data)
    copied = {}
    for path in copy_files:
        with open(path, "rb") as src, open(folder / path.name, "xb+") as out:
            shutil.copyfileobj(src, out)
            out.flush()
            fsync_fd(out.fileno())
            copied[path.name] = sha256_fd(out.fileno())  # what was written, read back
    faults.point("after-data")
    if before_sidecar is not None:
        before_sidecar()
    record(plan.sidecar, folder_id, digests)
    data = seal(plan.sidecar, copied)
    # a sidecar the loader's size cap would refuse must not be written (the folder would not load)
    check_sidecar_size(folder, len(data), f"{SIDECAR_NAME} (the folder was not written)", UnsupportedValue)
    write_durable(folder / SIDECAR_NAME, data)  # last: a folder with it is complete
    faults.point("after-sidecar")
    fsync_dir(folder)
    faults.point("after-fsync")


def _hash_and_sync(digest: OutputDigest) -> str:
    try:
        hexdigest = digest.finish()
        fsync_fd(digest.fd)
        return hexdigest
    finally:
        os.close(digest.fd)


def _install(temp: TempFolder, dst: Path, overwrite: bool) -> None:
    """Put the finished folder at `dst`; without overwrite only if `dst` is absent at that instant."""
    if not overwrite:
        try:
            rename_noreplace(temp.build, dst)
        except FileExistsError:
            raise OutputExists.for_path(dst, "created meanwhile by another run") from None
        return
    for _ in range(3):  # other overwriting runs hold the lock: only a plain create can interleave
        try:
            rename_exchange(temp.build, dst)  # the old folder is now temp.build, removed with the temp folder
        except FileNotFoundError:  # nothing to replace (removed meanwhile, or never there)
            try:
                rename_noreplace(temp.build, dst)
                return
            except FileExistsError:  # created meanwhile by a run without --overwrite: exchange with it
                continue
        except ExchangeUnsupported:
            _replace_in_two_steps(temp, dst)
            return
        faults.point("after-exchange")
        return
    raise ConvertError(f"{dst} keeps appearing and disappearing while it is being replaced; try again")


def _replace_in_two_steps(temp: TempFolder, dst: Path) -> None:
    """Where the OS cannot exchange: move the old folder aside (into the temp folder), then rename.
    A kill between the two renames leaves no destination, but the old folder in the marked temp one."""
    old = temp.moved_aside
    os.rename(dst, old)
    faults.point("after-move-aside")
    try:
        os.rename(temp.build, dst)
    except BaseException:
        os.rename(old, dst)
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
            raise CannotWrite(path, exc.strerror or str(exc)) from None
        fsync_dir(path.parent)
    return created
