"""The one conversion: any Source → a checkpoint folder, with one precheck and one report type."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputExists
from ..sidecar.schema import SIDECAR_NAME, read_sidecar
from ..sources.base import Source
from ..write.ownership import check_outside_sources, check_replaceable, not_a_folder
from .pipeline import provenance, write_checkpoint_folder


@dataclass
class ConversionReport:
    """What a conversion (or `save_checkpoint`) wrote; counts are the sidecars' (plain entries included).

    A unit folder (HF, Trainer/Accelerate, DCP with extra files) writes several sidecars: the counts
    add them up, and `converted`/`copied`/`skipped`/`sha256` say what happened to each file of it.
    """

    source: Path | None
    destination: Path
    source_format: str
    files: dict[str, dict]
    tensors: int
    arrays: int
    bytes: int
    modules: list[str]
    kind: str = "file"
    sha256: str | None = None
    converted: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[list[str]] = field(default_factory=list)


def precheck(dst: Path, sources: Sequence[str | os.PathLike], overwrite: bool, *, file: bool = False) -> None:
    """Before reading a possibly large source: the destination is free, or replaceable (the writer asks again).
    `file`: the output is one file (export's OUT; see `check_replaceable`)."""
    if not file and os.path.islink(dst):  # never followed nor replaced: --overwrite would not help
        raise not_a_folder(dst)
    if os.path.lexists(dst) and not overwrite:
        check_replaceable(dst, sources, file=file)  # what --overwrite would refuse is said now, not after the hint
        raise OutputExists.for_path(dst)
    if overwrite:
        check_replaceable(dst, sources, file=file)
    if not file:
        check_outside_sources(dst, sources)


def convert(source: Source, dst: str | os.PathLike, *, overwrite: bool = False,
            max_shard_size: int | str | None = None) -> ConversionReport:
    """Write the opened `source` as the folder `dst` (atomically; `seal` runs before the sidecar)."""
    dst = Path(dst)
    precheck(dst, source.sources, overwrite)
    sidecar = write_checkpoint_folder(
        source.root, dst, provenance=provenance(source.provenance()), overwrite=overwrite,
        max_shard_size=max_shard_size, kernel_copy_source=source.kernel_copy_sources, complete_source=source.seal,
        copy_files=source.copy_files, sources=source.sources, root_shards=source.root_shards)
    report = report_of(source.path if source.kind != "live" else None, dst, [("", sidecar)], kind=source.kind)
    report.sha256 = sidecar["source"].get("sha256")
    return report


def _plain_count(sidecar: dict, prefix: str) -> int:
    """Tensors ("t") or arrays ("a") with no row of their own (listed in the sidecar's entries)."""
    return sum(id_.startswith(prefix) for ids in sidecar.get("entries", {}).values() for id_ in ids)


def report_of(src: Path | None, dst: Path, found: list[tuple[str, dict]], *, kind: str,
              **fields: Any) -> ConversionReport:
    """The report of the folder(s) whose (relative folder, sidecar) pairs are `found`; the first names the format."""
    sidecars = [s for _, s in found]
    files = {f"{rel}/{name}" if rel else name: info for rel, s in found for name, info in s["files"].items()}
    return ConversionReport(
        src, dst, sidecars[0]["source"]["format"] if sidecars else kind, files,
        sum(len(s["tensors"]) + _plain_count(s, "t") for s in sidecars),
        sum(len(s["arrays"]) + _plain_count(s, "a") for s in sidecars),
        sum(f["bytes"] for s in sidecars for f in s["files"].values()),
        [m["class"] for s in sidecars for m in s["modules"]], kind=kind, **fields)


def sidecars_under(folder: Path) -> list[tuple[str, dict]]:
    """Every sidecar of a unit's output (its top folder's first) with its folder relative to `folder`."""
    found = sorted(folder.rglob(SIDECAR_NAME), key=lambda p: (len(p.parts), str(p)))
    return [(p.parent.relative_to(folder).as_posix().strip("."), read_sidecar(p.parent)) for p in found]
