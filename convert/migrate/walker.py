"""Migration jobs: what `discover.walk` finds, each with its stable output path.

Naming rule (injective by construction, a function of the source's path relative to SRC alone):
a checkpoint file `SRC/a/b/x.pt` becomes the folder `DST/a/b/x.pt/` (the full file name kept, so
`x.pt`, `x.pth` and a folder `x.pt.converted/` never share an output), and a unit folder `SRC/a/u/`
becomes `DST/a/u/` (a unit is never descended into, so nothing else maps under it). SRC itself
being a unit maps to `DST/<its name>/`. The walk is a generator: the first jobs start converting
while the rest of a huge tree is still being listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..sources.discover import CHECKPOINT_SUFFIXES, WalkStats, looks_like_checkpoint, walk  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Job:
    kind: str  # "file", "hf", "dcp" (a torch.distributed.checkpoint folder) or "framework" (frameworks.py)
    source: Path
    rel: str  # source path relative to the migration root (posix)
    output_rel: str  # output folder relative to the destination root (posix)
    size: int
    mtime_ns: int = 0  # newest mtime of the job's input files: with `size`, what lets a re-run skip it
    replace: bool = False  # the output exists and this migration wrote it: it may be replaced
    root: Path | None = None  # the migration's SRC: symlinks inside a unit are followed only into it
    sign_only: bool = False  # up to date but not signed by --sign-key: only sign its output (migrate/signatures.py)


def output_rel(rel: str, source: Path) -> str:
    """The stable output path of a source (see the module docstring)."""
    if rel == ".":
        return Path(source).resolve().name or "checkpoint"
    return rel


def iter_jobs(src: Path, stats: WalkStats, skip: Path | None = None,
              on_folder: Callable[[str], None] | None = None) -> Iterator[Job]:
    """Yield every job under `src` in a stable order (see `discover.walk`)."""
    for found in walk(src, stats, skip, on_folder):
        yield Job(found.kind, found.path, found.rel, output_rel(found.rel, found.path), found.size, found.mtime_ns,
                  root=src)


def find_jobs(src: Path, skip: Path | None = None) -> tuple[list[Job], int]:
    """All jobs under `src` in a stable order, and the number of other files seen (non-streaming form)."""
    stats = WalkStats()
    jobs = list(iter_jobs(src, stats, skip))
    return jobs, stats.others + stats.special
