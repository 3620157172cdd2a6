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

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..primitives.durable import copy_durably, fsync_dir
from ..primitives.hashing import sha256_path
from ..primitives.source import Identity, SourceChanged, open_regular
from ..sidecar.schema import SIDECAR_NAME
from ..sources.base import Source
from ..sources.dcp_folder import DcpSource
from ..sources.dcp_metadata import dcp_files, rank_metadata_files
from ..sources.discover import entries, is_pickle, unit_kind
from ..sources.file import FileSource
from ..sources.hf import HfSource, weight_names
from ..write.folder import build_folder
from .convert import convert
from .verify import verify_source

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


def top_source(kind: str, src: Path, root: Path) -> Source:
    """The Source of a unit's own top-level weights (HF weights + its plain top-level files, a DCP folder)."""
    if kind == "hf":  # config.json, tokenizer files: copied by the writer, so checkpoint.json seals them
        done = converted_by_top(kind, src)
        return HfSource(src, copy_files=[e.path for e in entries(src, root)
                                         if e.what == "file" and e.name not in done and not is_pickle(e.path)])
    assert kind == "dcp", kind  # `_top_kind` gives "hf", "dcp" or None
    return DcpSource(src)


def _fill(kind: str | None, src: Path, out: Path, root: Path, rel: str, outcome: UnitOutcome,
          digest: hashlib._Hash, max_shard_size: int | str | None) -> None:
    kind = _top_kind(kind, src)
    done = converted_by_top(kind, src)
    if kind is not None:  # the weights first, in a hidden folder, then moved up (names checked free below)
        weights = out / WEIGHTS_TMP
        with top_source(kind, src, root) as source:
            convert(source, weights, max_shard_size=max_shard_size)
            copied = [p.name for p in source.copy_files]
        done |= set(copied)
        outcome.copied += [f"{rel}/{name}" if rel else name for name in copied]
        for name in sorted(os.listdir(weights)):
            os.rename(weights / name, out / name)
        os.rmdir(weights)
        outcome.converted.append(rel or ".")
    for e in entries(src, root):
        sub = f"{rel}/{e.name}" if rel else e.name
        if e.name in done:
            digest.update(f"{sub}\0{sha256_path(e.path)}\n".encode("utf-8", "surrogateescape"))
            continue
        if e.what == "skip":
            if not e.path.is_symlink() and not e.path.is_dir():  # a FIFO, socket or device: the unit is refused
                os.close(open_regular(e.path)[0])  # raises the one wording ("...: is a FIFO, not a regular file")
            outcome.skipped.append((sub, e.reason))
            continue
        if os.path.lexists(out / e.name):
            raise ConvertError(f"{sub}: its name is taken by the unit's converted weights; rename it in the source")
        if e.name == SIDECAR_NAME:  # copied as is, it would make the output a converted folder with a foreign sidecar
            raise ConvertError(f"{sub}: its name is ckpt-convert's sidecar's, which every tool reads as the folder's "
                               "description; rename it in the source")
        if e.what == "folder":
            (out / e.name).mkdir()
            _fill(unit_kind(e.path), e.path, out / e.name, root, sub, outcome, digest, max_shard_size)
            continue
        digest.update(f"{sub}\0{sha256_path(e.path)}\n".encode("utf-8", "surrogateescape"))
        if is_pickle(e.path):
            try:
                with FileSource(e.path, converting=True) as source:
                    convert(source, out / e.name, max_shard_size=max_shard_size)
            except ConvertError as exc:
                exc.args = (f"{sub}: {exc}",)  # the unit fails with the reason of the file that could not be
                raise
            outcome.converted.append(sub)
        else:
            copy_durably(e.path, out / e.name)
            outcome.copied.append(sub)
    fsync_dir(out)


def _identities(folder: Path, root: Path) -> dict[Path, Identity]:
    """The identity (device, inode, size, mtime, ctime) of every file of the unit, subfolders included."""
    found: dict[Path, Identity] = {}
    for e in entries(folder, root):
        if e.what == "folder":
            found.update(_identities(e.path, root))
        elif e.what == "file":
            try:
                found[e.path] = Identity.of(os.stat(e.path))
            except OSError:
                continue  # gone: the comparison reports it
    return found


def convert_unit(kind: str, src: str | os.PathLike, dst: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 overwrite: bool = False, max_shard_size: int | str | None = None) -> dict:
    """Convert the unit folder `src` (of `kind`: "hf", "dcp", "framework") into the new folder `dst`.

    Args:
        kind: what `discover.unit_kind` said. src: the unit folder (never written to).
        dst: the folder to create, atomically. root: symlinks resolving inside it are followed (default: `src`).
        overwrite: replace an existing `dst` (the caller decides that it may).
        max_shard_size: shards every state dict converted inside the unit (see `convert`).

    Returns:
        {"converted": [...], "copied": [...], "skipped": [[rel, reason], ...], "sha256": one digest
        over the names and digests of every file read}.
    """
    src, dst = Path(src), Path(dst)
    root = Path(root) if root is not None else src
    outcome, digest = UnitOutcome(), hashlib.sha256()
    before = _identities(src, root)  # the unit is converted whole or not at all: unchanged from start to publish

    def fill(folder: Path) -> None:
        _fill(kind, src, folder, root, "", outcome, digest, max_shard_size)
        changed = next((path for path, identity in _identities(src, root).items() if before.get(path) != identity),
                       None) or next((path for path in before if not os.path.lexists(path)), None)
        if changed is not None:
            raise SourceChanged(f"{changed} changed while it was being converted; nothing was written")

    build_folder(dst, fill, overwrite=overwrite, sources=[src])
    return {"converted": outcome.converted, "copied": outcome.copied,
            "skipped": [list(s) for s in outcome.skipped], "sha256": digest.hexdigest()}


def verify_unit(kind: str | None, src: str | os.PathLike, dst: str | os.PathLike, *,
                root: str | os.PathLike | None = None, rel: str = "") -> list[str]:
    """Differences between a unit and its conversion: weights and pickles as trees, copies byte for byte."""
    src, dst = Path(src), Path(dst)
    root = Path(root) if root is not None else src
    kind = _top_kind(kind, src)
    diffs: list[str] = []
    done = converted_by_top(kind, src)
    if kind is not None:  # the weights as one tree, their provenance and sha256 (copied files: below)
        try:
            with top_source(kind, src, root) as source:
                diffs += verify_source(source, dst)
        except ConvertError as exc:
            diffs.append(f"{rel or '.'}: {exc}")
    for e in entries(src, root):
        sub = f"{rel}/{e.name}" if rel else e.name
        if e.name in done or e.what == "skip":
            continue
        if e.what == "folder":
            diffs += verify_unit(unit_kind(e.path), e.path, dst / e.name, root=root, rel=sub)
        elif is_pickle(e.path):
            with contextlib.suppress(ConvertError), FileSource(e.path) as source:
                diffs += [f"{sub}: {d}" for d in verify_source(source, dst / e.name)]
                continue
            diffs.append(f"{sub}: its converted folder does not load")
        elif not (dst / e.name).is_file() or sha256_path(dst / e.name) != sha256_path(e.path):
            diffs.append(f"{sub}: the copy differs from the original")
    return diffs


def verify_hf_folder(src: str | Path, dst: str | Path) -> list[str]:
    """Differences between an HF folder and its conversion (see `verify_unit`)."""
    return verify_unit("hf", src, dst)


def convert_hf_folder(src: str | Path, dst: str | Path, *, overwrite: bool = False,
                      max_shard_size: int | str | None = None) -> dict:
    """Convert an HF folder whole (weights, other files, module subfolders) into `dst`: see `units.convert_unit`."""
    return convert_unit("hf", src, dst, overwrite=overwrite, max_shard_size=max_shard_size)


def convert_framework_folder(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                             max_shard_size: int | str | None = None) -> dict[str, Any]:
    """Convert a Trainer/Accelerate checkpoint folder (every file of every subfolder) into the new folder `dst`."""
    return convert_unit("framework", src, dst, overwrite=overwrite, max_shard_size=max_shard_size)


def verify_framework_folder(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Differences between a framework folder and its conversion (see `verify_unit`)."""
    return verify_unit("framework", src, dst)
