"""Full materialisation on the CPU: every storage read into its own fresh memory, in parallel.

The lazy path maps the files (pages come in on first touch and stay file-backed); this one gives
torch.load's result — ordinary, independent host memory — but reads with `preadv` straight into
each storage's final allocation, chunked over a few threads (pread and the page faults it takes
on fresh memory run without the GIL), so there is no intermediate copy and no unpickling.

Only entries of already-validated SafetensorsFile objects are read: offsets and sizes come from
their checked headers, and a file that changed size since it was validated is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch

from ..errors import MalformedCheckpoint
from .safetensors_reader import SafetensorsFile

CHUNK = 16 << 20  # bytes per read: small enough to spread one big storage over all threads
FILES_AT_ONCE = 8  # descriptors held at once by a full load


@dataclass(frozen=True)
class Job:
    """Read `nbytes` at absolute `offset` of `file` into a new host tensor."""

    file: SafetensorsFile
    key: str
    offset: int
    nbytes: int


def read_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def jobs_for(files_keys: Iterable[tuple[SafetensorsFile, str]]) -> list[Job]:
    """One job per distinct (file, key) that exists and holds bytes; others are left to the lazy path."""
    seen: dict[tuple[int, str], Job] = {}
    for file, key in files_keys:
        entry = file.entries.get(key)
        if entry is not None and entry.nbytes and (id(file), key) not in seen:
            seen[(id(file), key)] = Job(file, key, entry.start, entry.nbytes)
    return list(seen.values())


def open_checked(file: SafetensorsFile) -> int:
    """A descriptor on the file, refused if it is no longer the file (or the size) that was validated."""
    fd = os.open(file.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    expected = len(file.map) if file.map is not None else 0
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != file.identity:  # e.g. the folder was replaced by a new conversion meanwhile
        os.close(fd)
        raise MalformedCheckpoint(f"{file.path.name} was replaced while it was being loaded")
    if st.st_size != expected:
        os.close(fd)
        raise MalformedCheckpoint(f"{file.path.name} changed size while it was being loaded")
    return fd


def pread_exact(fd: int, view: memoryview, offset: int, name: str) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise MalformedCheckpoint(f"{name} was truncated while it was being loaded")
        done += n


def read_to_host(jobs: list[Job], threads: int | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """(id(file), key) → a fresh uint8 tensor holding the entry's bytes.

    Files are read a few at a time (FILES_AT_ONCE descriptors at most, whatever their number), so a
    folder of many shards loads under a low `ulimit -n`.
    """
    out: dict[tuple[int, str], torch.Tensor] = {}
    by_file: dict[int, list[Job]] = {}
    for job in jobs:
        by_file.setdefault(id(job.file), []).append(job)
    groups = list(by_file.values())
    if not groups:
        return out
    with ThreadPoolExecutor(threads or read_threads(), thread_name_prefix="ckpt-load") as pool:
        for start in range(0, len(groups), FILES_AT_ONCE):
            _read_files(groups[start:start + FILES_AT_ONCE], pool, out)
    return out


def _read_files(groups: list[list[Job]], pool: ThreadPoolExecutor, out: dict[tuple[int, str], torch.Tensor]) -> None:
    fds: list[int] = []
    pieces: list[tuple[int, memoryview, int, str]] = []
    try:
        for group in groups:
            fds.append(open_checked(group[0].file))
            for job in group:
                dst = torch.empty(job.nbytes, dtype=torch.uint8)
                out[(id(job.file), job.key)] = dst
                view = memoryview(dst.numpy())
                for start in range(0, job.nbytes, CHUNK):
                    pieces.append((fds[-1], view[start:start + CHUNK], job.offset + start, job.file.path.name))
        pieces.sort(key=lambda p: -len(p[1]))  # big reads first: the pool finishes evenly
        futures = [pool.submit(_read_all, batch) for batch in _batches(pieces)]
        wait(futures)  # all done before the descriptors close, even when one read failed
        for future in futures:
            future.result()
    finally:
        for fd in fds:
            os.close(fd)


def _read_all(batch: list[tuple[int, memoryview, int, str]]) -> None:
    for piece in batch:
        pread_exact(*piece)


def _batches(pieces: list[tuple[int, memoryview, int, str]]) -> list[list[tuple[int, memoryview, int, str]]]:
    """Consecutive runs of the (size-sorted) pieces, each about CHUNK bytes or one piece: one pool job per
    run instead of per piece, so hundreds of thousands of small tensors cost as many reads, not as many
    futures."""
    batches: list[list[tuple[int, memoryview, int, str]]] = []
    size = CHUNK
    for piece in pieces:
        if size >= CHUNK:
            batches.append([])
            size = 0
        batches[-1].append(piece)
        size += len(piece[1])
    return batches
