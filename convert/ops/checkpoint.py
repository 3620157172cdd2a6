"""Operations on one checkpoint (a file or a DCP folder): convert, read safely, scan, verify.

convert and scan import no torch (tensors are byte ranges until they are loaded); read_checkpoint and
verify_checkpoint hand back or compare torch tensors, so they import the torch side when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputExists, require_torch
from ..primitives.hashing import BackgroundSha256, sha256_fd
from ..read import Input, read_tree
from ..write.ownership import check_replaceable
from ..write.plan import make_plan
from ..write.safetensors_io import KernelCopySource
from .dcp import convert_dcp_folder, is_dcp_folder, plan_dcp_folder, read_dcp_folder, verify_dcp_folder
from .pipeline import file_source, provenance, write_checkpoint_folder


@dataclass
class ConversionReport:
    """What `convert_checkpoint` wrote."""

    source: Path
    destination: Path
    source_format: str
    files: dict[str, dict]
    tensors: int
    arrays: int
    bytes: int
    modules: list[str]


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                       max_shard_size: int | str | None = None) -> ConversionReport:
    """Convert a pickled checkpoint file (or a torch.distributed.checkpoint folder) to a folder of
    safetensors files plus `checkpoint.json`.

    Nothing in `src` is executed. The folder appears atomically, complete or not at all.
    Raises UnsafeCheckpoint (the file names code-execution gadgets), MalformedCheckpoint or
    UnsupportedValue, or OutputExists if `dst` exists and `overwrite` is False.
    `max_shard_size` ("5GB", "500MiB" or bytes) splits larger state dicts into
    `NAME-00001-of-0000N.safetensors` shards with a `NAME.safetensors.index.json`.

    Example:
        >>> convert_checkpoint("old/checkpoint.pth", "new/checkpoint")   # doctest: +SKIP
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:  # before reading a possibly large source (write_folder checks again)
        raise OutputExists(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    if overwrite:  # the writer asks again before the swap; here, before reading a possibly large source
        check_replaceable(dst, [src])
    if is_dcp_folder(src):  # torch.distributed.checkpoint folder: its own reader, the same pipeline
        return _report(src, dst, convert_dcp_folder(src, dst, overwrite=overwrite, max_shard_size=max_shard_size))
    with Input(src, converting=True) as inp, BackgroundSha256(inp.fileno(), inp.size, inp.path) as hasher:
        result = read_tree(inp)

        def seal() -> dict:  # every byte is read: the hash is of what was converted iff the file did not change
            digest = hasher.hexdigest()
            inp.check_unchanged()
            return {"sha256": digest}

        sidecar = write_checkpoint_folder(
            result.root, dst, provenance=provenance(file_source(src.name, inp.size, result.format, result.protocol)),
            overwrite=overwrite, max_shard_size=max_shard_size,
            kernel_copy_source=KernelCopySource(inp.buf, inp.fileno()),  # stored tensors: file-to-file
            complete_source=seal, sources=[src])
        del result
    return _report(src, dst, sidecar)


def _report(src: Path, dst: Path, sidecar: dict) -> ConversionReport:
    return ConversionReport(src, dst, sidecar["source"]["format"], sidecar["files"],
                            len(sidecar["tensors"]) + _plain_count(sidecar, "t"),
                            len(sidecar["arrays"]) + _plain_count(sidecar, "a"),
                            sum(f["bytes"] for f in sidecar["files"].values()),
                            [m["class"] for m in sidecar["modules"]])


def _plain_count(sidecar: dict, prefix: str) -> int:
    """Tensors ("t") or arrays ("a") with no row of their own (listed in the sidecar's entries)."""
    return sum(id_.startswith(prefix) for ids in sidecar.get("entries", {}).values() for id_ in ids)


def plan_in_memory(src: str | os.PathLike) -> Any:
    """The conversion plan (sidecar and entries) for `src`, without writing anything."""
    src = Path(src)
    if is_dcp_folder(src):
        return plan_dcp_folder(src)
    with Input(src) as inp:
        result = read_tree(inp)
        plan = make_plan(result.root, _provenance(src, inp, result))
        inp.check_unchanged()
        return plan


def _provenance(src: Path, inp: Input, result: Any) -> dict:
    return provenance(file_source(src.name, inp.size, result.format, result.protocol,
                                  sha256_fd(inp.fileno(), inp.size, path=inp.path)))


def read_checkpoint(path: str | os.PathLike) -> Any:
    """A safe stand-in for `torch.load(path)`: the same tree, without running anything from the file.

    nn.Modules come back as their state_dict; unknown classes as inert `ObjectRecord`s.

    Example:
        >>> sd = read_checkpoint("model.pth")   # doctest: +SKIP
    """
    require_torch("read_checkpoint")
    if is_dcp_folder(Path(path)):
        return read_dcp_folder(path)
    from ..read.materialize import materialize  # torch: here, not at import, so convert/scan run without it

    with Input(path) as inp:
        tree = materialize(read_tree(inp).root)
        inp.check_unchanged()
        return tree


def verify_checkpoint(src: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """Differences between `src` (read safely) and the converted `folder`; empty means equivalent.

    This compares trees; the folder's own integrity record (digests) is checked by `verify_folder`.
    A folder mixing files of different conversions raises CorruptFolder (it cannot be loaded).
    """
    require_torch("verify_checkpoint (verifying against the source)")
    if is_dcp_folder(Path(src)):
        return verify_dcp_folder(src, folder)
    from ..load import load_checkpoint, read_sidecar
    from ..read.materialize import materialize
    from .compare import compare_trees  # torch: here, not at import, so convert/scan run without it

    sidecar = read_sidecar(Path(folder))
    with Input(src) as inp:  # one open: the hash and the tree are of the same file
        digest = sha256_fd(inp.fileno(), inp.size, path=inp.path)  # pread: RSS stays flat
        original = materialize(read_tree(inp).root)
        inp.check_unchanged()
    diffs = []
    if sidecar["source"]["sha256"] != digest:
        diffs.append(f"<source>: {folder} was converted from a different file (sha256 differs)")
    converted = load_checkpoint(folder, map_location="cpu")  # compared on the CPU, wherever saved
    return diffs + compare_trees(original, converted)


__all__ = ["ConversionReport", "convert_checkpoint", "plan_in_memory", "read_checkpoint", "verify_checkpoint"]
