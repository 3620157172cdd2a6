"""Which jobs a migrate takes (`--include`/`--exclude GLOB`), and `--dry-run`: what would be converted,
where to, what is a unit, what is skipped and why — from the walk alone, nothing written.

A glob matches a job's path relative to SRC_DIR (posix, `fnmatch`: `*` crosses `/`), or any of its
folders: `--exclude 'scratch/*'`, `--include '*.pt'`, `--include 'models/llama*'`. A job is taken if
it matches some --include (when any is given) and no --exclude.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvertError
from ..sources.discover import WalkStats
from .overlap import check_overlap
from .walker import Job, iter_jobs

UNIT_NAMES = {"file": "file", "hf": "Hugging Face model folder (one unit)", "dcp": "DCP folder (one unit)",
              "framework": "Trainer/Accelerate checkpoint folder (one unit)"}


def _matches(rel: str, pattern: str) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def selector(include: list[str] | None, exclude: list[str] | None) -> Callable[[Job], str | None] | None:
    """A function job → why it is left out (None: taken); None when nothing is filtered."""
    include, exclude = list(include or ()), list(exclude or ())
    if not include and not exclude:
        return None

    def why_not(job: Job) -> str | None:
        if include and not any(_matches(job.rel, p) for p in include):
            return "not matched by --include " + " ".join(include)
        for pattern in exclude:
            if _matches(job.rel, pattern):
                return f"excluded by --exclude {pattern}"
        return None

    return why_not


@dataclass
class DryRun:
    source: str
    destination: str
    would_convert: list[tuple[str, str, str]] = field(default_factory=list)  # (rel, output, what)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (rel, why)
    stats: WalkStats = field(default_factory=WalkStats)

    def table(self) -> str:
        lines = [f"migrate --dry-run: {self.source} → {self.destination} (nothing written)"]
        lines += [f"  convert  {rel} → {os.path.join(self.destination, out)}  [{what}]"
                  for rel, out, what in self.would_convert]
        lines += [f"  skip     {rel}: {why}" for rel, why in [*self.left_out, *self.stats.skipped]]
        lines.append(f"{len(self.would_convert)} to convert, {len(self.left_out)} left out by --include/--exclude, "
                     f"{self.stats.others} other files (not checkpoints, left alone)"
                     + (f", {self.stats.special} special files (never opened)" if self.stats.special else ""))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"command": "migrate --dry-run", "source": self.source, "destination": self.destination,
                "convert": [{"path": r, "output": o, "what": w} for r, o, w in self.would_convert],
                "left_out": [{"path": r, "reason": w} for r, w in self.left_out],
                "not_followed": [{"path": r, "reason": w} for r, w in self.stats.skipped],
                "other_files": self.stats.others, "special_files": self.stats.special}


def dry_run(src: str | os.PathLike, dst: str | os.PathLike, select: Callable[[Job], str | None] | None) -> DryRun:
    """What `migrate SRC DST` would do, from the walk: nothing is written, DST need not exist."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder")
    inside = check_overlap(src, dst)
    plan = DryRun(str(src), str(dst))
    for job in iter_jobs(src, plan.stats, skip=dst if inside else None):
        why = select(job) if select is not None else None
        if why:
            plan.left_out.append((job.rel, why))
        else:
            plan.would_convert.append((job.rel, job.output_rel, UNIT_NAMES.get(job.kind, job.kind)))
    return plan
