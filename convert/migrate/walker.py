"""Finding the checkpoints under a folder, by content: zip with data.pkl, legacy torch, pickle.

A Hugging Face model folder (config.json + pytorch_model.bin or its shards) is one job for the
whole folder, and so is a torch.distributed.checkpoint folder (`.metadata` + `*.distcp`).
Files whose first bytes are not a checkpoint's are counted, not converted.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..read.dcp import dcp_files, is_dcp_folder
from .hf import hf_checkpoint_files, is_hf_folder

CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar", ".model", ".pk"})


@dataclass(frozen=True)
class Job:
    kind: str  # "file", "hf" or "dcp" (a torch.distributed.checkpoint folder)
    source: Path
    rel: str  # source path relative to the migration root (posix)
    output_rel: str  # output folder relative to the destination root (posix)
    size: int


def looks_like_checkpoint(path: Path) -> bool:
    """A file named like a checkpoint, or whose first bytes are a torch zip's or a pickle's.

    A file named like a checkpoint that turns out unreadable is reported as failed, not ignored.
    """
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
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


def find_jobs(src: Path, skip: Path | None = None) -> tuple[list[Job], int]:
    """All jobs under `src` in a stable order, and the number of other files seen.

    `skip` (the destination, if it lies inside the source) is never walked. Symlinks are not followed.
    """
    jobs: list[Job] = []
    others = 0
    skip_real = os.path.realpath(skip) if skip else None
    for root, dirs, names in os.walk(src):
        folder = Path(root)
        dirs[:] = sorted(d for d in dirs if not (folder / d).is_symlink()
                         and os.path.realpath(folder / d) != skip_real and not d.startswith(".ckpt-convert"))
        rel_folder = folder.relative_to(src).as_posix()
        taken: set[str] = set()
        if is_dcp_folder(folder):  # a torch.distributed.checkpoint folder: one job for the whole folder
            files = dcp_files(folder)
            out_rel = rel_folder if rel_folder != "." else folder.resolve().name or "checkpoint"
            jobs.append(Job("dcp", folder, rel_folder, out_rel, sum(p.stat().st_size for p in files)))
            others += len(names) - len(files)
            dirs[:] = []
            continue
        if is_hf_folder(folder):
            weights = {p.name for p in hf_checkpoint_files(folder)} | {"pytorch_model.bin.index.json"}
            size = sum((folder / n).stat().st_size for n in weights if (folder / n).is_file())
            out_rel = rel_folder if rel_folder != "." else folder.resolve().name or "model"  # never the root itself
            jobs.append(Job("hf", folder, rel_folder, out_rel, size))
            others += sum(1 for n in names if n not in weights)
            continue
        candidates = [n for n in sorted(names) if not (folder / n).is_symlink() and looks_like_checkpoint(folder / n)]
        others += len(names) - len(candidates)
        stems = [Path(n).stem for n in candidates]
        for name in candidates:
            stem = Path(name).stem
            out = stem if stems.count(stem) == 1 and stem not in names else name + ".converted"
            while out in taken:
                out += "_"
            taken.add(out)
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            out_rel = out if rel_folder == "." else f"{rel_folder}/{out}"
            jobs.append(Job("file", folder / name, rel, out_rel, (folder / name).stat().st_size))
    return jobs, others
