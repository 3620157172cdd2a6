"""A unit folder converted whole: one job, one output folder, nothing inside it left to another job.

    checkpoint-500/  (Trainer)             DST/checkpoint-500/
      model.safetensors, config.json         copied as they are (already safe)
      optimizer.pt, training_args.bin        optimizer.pt/, training_args.bin/: converted folders
      global_step500/*.pt (DeepSpeed)        global_step500/<name>/: converted folders
    bert/  (HF, sentence-transformers)     DST/bert/
      pytorch_model.bin (+ shards)           model.safetensors (+ index), checkpoint.json
      1_Pooling/config.json                  1_Pooling/config.json
      2_Dense/{config.json,pytorch_model.bin}  2_Dense/ as an HF folder of its own (nested unit)

Every file inside is either converted (a pickle, by name or by its first bytes: `discover.is_pickle`)
or copied byte for byte: a pickle is never copied into an output. A pickle that cannot be converted
fails the whole unit, with its reason. Symlinks resolving to a file inside SRC are followed (an HF
cache snapshot); others are skipped and reported. `.git/` folders are skipped (and reported). The
output is built in a temporary folder and renamed into place (`write.folder.build_folder`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..primitives.durable import copy_durably, fsync_dir
from ..primitives.hashing import sha256_fd
from ..sources.dcp_folder import dcp_files
from ..sources.dcp_metadata import rank_metadata_files
from ..sources.discover import entries, is_pickle, unit_kind
from ..sources.hf import hf_checkpoint_files, weight_names, write_hf_weights
from ..write.folder import build_folder
from .checkpoint import convert_checkpoint, read_checkpoint, verify_checkpoint

WEIGHTS_TMP = ".ckpt-convert-weights"


@dataclass
class UnitOutcome:
    converted: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def converted_by_top(kind: str | None, folder: Path) -> set[str]:
    """The source names the unit's own converter (HF weights, DCP parts) consumes at its top level."""
    if kind == "hf":
        return weight_names(folder)
    if kind == "dcp":  # the rank-local __N.metadata too: the DCP reader checks them against .metadata
        return {p.name for p in dcp_files(folder) + rank_metadata_files(folder)}
    return set()


def _top_kind(kind: str | None, folder: Path) -> str | None:
    # an HF folder that also ships model.safetensors: its pytorch_model.bin is converted like any pickle
    # (to pytorch_model.bin/), so the safe weights it already has are copied, not overwritten
    if kind == "hf" and (folder / "model.safetensors").exists():
        return None
    return kind if kind in ("hf", "dcp") else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_fd(f.fileno(), os.fstat(f.fileno()).st_size)


def _fill(kind: str | None, src: Path, out: Path, root: Path, rel: str, outcome: UnitOutcome,
          digest: hashlib._Hash) -> None:
    kind = _top_kind(kind, src)
    done = converted_by_top(kind, src)
    if kind is not None:  # the weights first, in a hidden folder, then moved up (names checked free below)
        weights = out / WEIGHTS_TMP
        if kind == "hf":
            write_hf_weights(src, weights)
        else:
            convert_checkpoint(src, weights)
        for name in sorted(os.listdir(weights)):
            os.rename(weights / name, out / name)
        os.rmdir(weights)
        outcome.converted.append(rel or ".")
    for e in entries(src, root):
        sub = f"{rel}/{e.name}" if rel else e.name
        if e.name in done:
            digest.update(f"{sub}\0{_sha256(e.path)}\n".encode("utf-8", "surrogateescape"))
            continue
        if e.what == "skip":
            outcome.skipped.append((sub, e.reason))
            continue
        if os.path.lexists(out / e.name):
            raise ConvertError(f"{sub}: its name is taken by the unit's converted weights; rename it in the source")
        if e.what == "folder":
            (out / e.name).mkdir()
            _fill(unit_kind(e.path), e.path, out / e.name, root, sub, outcome, digest)
            continue
        digest.update(f"{sub}\0{_sha256(e.path)}\n".encode("utf-8", "surrogateescape"))
        if is_pickle(e.path):
            try:
                convert_checkpoint(e.path, out / e.name)
            except ConvertError as exc:
                exc.args = (f"{sub}: {exc}",)  # the unit fails with the reason of the file that could not be
                raise
            outcome.converted.append(sub)
        else:
            copy_durably(e.path, out / e.name)
            outcome.copied.append(sub)
    fsync_dir(out)


def convert_unit(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 overwrite: bool = False) -> dict:
    """Convert the unit folder `src` (of `kind`: "hf", "dcp", "framework") into the new folder `dst`.

    Args:
        kind: what `discover.unit_kind` said. src: the unit folder (never written to).
        dst: the folder to create, atomically. root: symlinks resolving inside it are followed (default: `src`).
        overwrite: replace an existing `dst` (the caller decides that it may).

    Returns:
        {"converted": [...], "copied": [...], "skipped": [[rel, reason], ...], "sha256": one digest
        over the names and digests of every file read}.
    """
    src, dst = Path(src), Path(dst)
    root = Path(root) if root is not None else src
    outcome, digest = UnitOutcome(), hashlib.sha256()
    build_folder(dst, lambda folder: _fill(kind, src, folder, root, "", outcome, digest), overwrite=overwrite,
                 sources=[src])
    return {"converted": outcome.converted, "copied": outcome.copied,
            "skipped": [list(s) for s in outcome.skipped], "sha256": digest.hexdigest()}


def verify_unit(kind: str | None, src: str | os.PathLike, dst: str | os.PathLike, *,
                root: str | os.PathLike | None = None, rel: str = "") -> list[str]:
    """Differences between a unit and its conversion: weights and pickles as trees, copies byte for byte."""
    src, dst = Path(src), Path(dst)
    root = Path(root) if root is not None else src
    kind = _top_kind(kind, src)
    diffs: list[str] = []
    if kind == "hf":
        diffs += verify_hf_folder(src, dst)
    elif kind == "dcp":
        diffs += verify_checkpoint(src, dst)
    done = converted_by_top(kind, src)
    for e in entries(src, root):
        sub = f"{rel}/{e.name}" if rel else e.name
        if e.name in done or e.what == "skip":
            continue
        if e.what == "folder":
            diffs += verify_unit(unit_kind(e.path), e.path, dst / e.name, root=root, rel=sub)
        elif is_pickle(e.path):
            with contextlib.suppress(ConvertError):
                diffs += [f"{sub}: {d}" for d in verify_checkpoint(e.path, dst / e.name)]
                continue
            diffs.append(f"{sub}: its converted folder does not load")
        elif not (dst / e.name).is_file() or _sha256(dst / e.name) != _sha256(e.path):
            diffs.append(f"{sub}: the copy differs from the original")
    return diffs


def verify_hf_folder(src: str | Path, dst: str | Path) -> list[str]:
    """Differences between each weight file of `src` (read safely) and the converted folder."""
    from ..load import load_checkpoint  # torch: here, not at import
    from .compare import compare_trees

    loaded = load_checkpoint(dst, map_location="cpu")  # compared on the CPU, wherever saved
    diffs: list[str] = []
    seen = 0
    for path in hf_checkpoint_files(Path(src)):
        original = read_checkpoint(path)
        part = collections.OrderedDict((k, loaded[k]) for k in original if k in loaded)
        if list(part) != list(original):
            diffs.append(f"{path.name}: keys missing from the converted folder")
            continue
        seen += len(part)
        diffs += [f"{path.name}: {d}" for d in compare_trees(collections.OrderedDict(original), part)
                  if "<_metadata>" not in d and "attributes" not in d]
    if seen != len(loaded):
        diffs.append(f"the converted folder has {len(loaded) - seen} keys no weight file has")
    return diffs


def convert_hf_folder(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> dict:
    """Convert an HF folder whole (weights, other files, module subfolders) into `dst`: see `units.convert_unit`."""
    return convert_unit("hf", src, dst, overwrite=overwrite)


def convert_framework_folder(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Convert a Trainer/Accelerate checkpoint folder (every file of every subfolder) into the new folder `dst`."""
    return convert_unit("framework", src, dst, overwrite=overwrite)


def verify_framework_folder(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Differences between a framework folder and its conversion (see `verify_unit`)."""
    return verify_unit("framework", src, dst)
