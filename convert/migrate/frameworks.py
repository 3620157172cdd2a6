"""Training-framework checkpoint folders as units: a Hugging Face Trainer `checkpoint-N/`, an Accelerate `save_state` folder.

Such a folder becomes one converted folder with the same layout:

    checkpoint-500/                      checkpoint-500/  (converted)
      model.safetensors                    model.safetensors        copied as it is (already safe)
      config.json, trainer_state.json      config.json, ...         copied as they are
      tokenizer.json, ...                  tokenizer.json, ...
      optimizer.pt                         optimizer.pt/            a converted folder: checkpoint.json + safetensors
      scheduler.pt                         scheduler.pt/            (load_checkpoint(out / "optimizer.pt"))
      rng_state.pth                        rng_state.pth/
      training_args.bin                    training_args.bin/

Accelerate's `optimizer.bin`, `scheduler.bin`, `sampler.bin`, `scaler.pt`, `random_states_0.pkl`,
`custom_checkpoint_0.pkl` (and `pytorch_model.bin` where safe serialization was off) are converted the
same way. A file is a pickle when its bytes say so (a torch zip or a binary pickle) or its name is a
checkpoint's (.pt, .pth, .bin, .pkl, ...); such a file that cannot be converted fails the whole folder.
The folder appears atomically: it is built beside the destination and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ..api import convert_checkpoint, verify_checkpoint
from ..write.durable import copy_durably, fsync_dir
from ..write.folder import build_folder
from ..write.source_hash import sha256_fd

TRAINER_PICKLES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|training_args\.bin|rng_state(_\d+)?\.pth)$")
ACCELERATE_PICKLES = re.compile(r"^(random_states_\d+\.pkl|optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin|"
                                r"sampler(_\d+)?\.bin|dl_state_dict(_\d+)?\.bin|scaler\.pt|custom_checkpoint_\d+\.pkl)$")
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar"})


def framework_of(folder: Path, names: list[str]) -> str | None:
    """"hf-trainer" or "accelerate" if `folder` (holding the files `names`) is such a checkpoint, else None."""
    if "trainer_state.json" in names and any(TRAINER_PICKLES.match(n) for n in names):
        return "hf-trainer"
    if any(n.startswith("random_states_") and n.endswith(".pkl") for n in names) and \
            any(ACCELERATE_PICKLES.match(n) for n in names if not n.startswith("random_states_")):
        return "accelerate"
    return None


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and head[1] <= 5)


def folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(pickles to convert, safe files to copy) of a framework folder; hidden files and links are left out."""
    pickles, safe = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_symlink() or not path.is_file():
            continue
        (pickles if _is_pickle(path) else safe).append(path)
    return pickles, safe


def fingerprint(folder: Path) -> tuple[int, int]:
    """(total size, newest mtime) of the folder's files: what decides whether a migrate re-run may skip it."""
    pickles, safe = folder_files(folder)
    stats = [p.stat() for p in pickles + safe]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_fd(f.fileno(), os.fstat(f.fileno()).st_size)


def convert_framework_folder(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Convert a Trainer/Accelerate checkpoint folder; returns {"converted": [...], "copied": [...], "sha256": ...}.

    Args:
        src: the framework's checkpoint folder (never written to).
        dst: the folder to create, atomically.
        overwrite: replace an existing `dst`.

    Returns:
        The names converted (each now a sub-folder of that name), the names copied, and one sha256 over
        the names and digests of all of the source's files (the migrate manifest's fingerprint).
    """
    src, dst = Path(src), Path(dst)
    pickles, safe = folder_files(src)
    digest = hashlib.sha256()

    def fill(folder: Path) -> None:
        for path in pickles:
            convert_checkpoint(path, folder / path.name)  # each one atomic and fsync'd itself
        for path in safe:
            copy_durably(path, folder / path.name)
        fsync_dir(folder)
        for path in sorted(pickles + safe):
            digest.update(f"{path.name}\0{_sha256(path)}\n".encode())

    build_folder(dst, fill, overwrite=overwrite, sources=[src])  # marked temp folder, exclusive create or atomic swap
    return {"converted": [p.name for p in pickles], "copied": [p.name for p in safe], "sha256": digest.hexdigest()}


def verify_framework_folder(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Differences between a framework folder and its conversion: each pickle against its sub-folder, copies byte-exact."""
    src, dst = Path(src), Path(dst)
    pickles, safe = folder_files(src)
    diffs: list[str] = []
    for path in pickles:
        diffs += [f"{path.name}: {d}" for d in verify_checkpoint(path, dst / path.name)]
    for path in safe:
        copy = dst / path.name
        if not copy.is_file() or _sha256(copy) != _sha256(path):
            diffs.append(f"{path.name}: the copy differs from the original")
    return diffs
