"""The public operations: convert, read safely, scan, verify.

convert and scan import no torch (tensors are byte ranges until they are loaded); read_checkpoint and
verify_checkpoint hand back or compare torch tensors, so they import the torch side when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ConvertError, OutputExists, UnsafeCheckpoint
from .read import Input, read_tree
from .read.vm import Finding
from .schema import validate
from .write.folder import write_folder
from .write.plan import make_plan
from .write.safetensors_io import kernel_copy_from
from .write.shards import parse_size
from .write.source_hash import PENDING_SHA256, BackgroundSha256, sha256_fd


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


@dataclass
class ScanReport:
    """What a file would do if unpickled: the globals it names and the known gadgets among them."""

    path: Path
    format: str | None
    globals: list[str] = field(default_factory=list)
    unsafe: list[Finding] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.unsafe


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                       max_shard_size: int | str | None = None) -> ConversionReport:
    """Convert a pickled checkpoint file to a folder of safetensors files plus `checkpoint.json`.

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
    with Input(src) as inp, BackgroundSha256(inp._file.fileno(), inp.size) as source_hash:
        result = read_tree(inp)
        provenance = _provenance(src, inp, result, sha256=PENDING_SHA256)  # the real one is filled in below
        plan = make_plan(result.root, provenance, max_shard_size=_shard_bytes(max_shard_size))
        validate(plan.sidecar, "generated sidecar")  # a writer bug must never produce an unloadable folder
        with kernel_copy_from(inp.buf, inp._file.fileno()):  # stored tensors: file-to-file, not through memory
            write_folder(plan, dst, overwrite=overwrite,
                         before_sidecar=lambda: provenance.update(sha256=source_hash.hexdigest()))
        del result
    sidecar = plan.sidecar
    return ConversionReport(src, dst, sidecar["source"]["format"], sidecar["files"], len(sidecar["tensors"]),
                            len(sidecar["arrays"]), sum(f["bytes"] for f in sidecar["files"].values()),
                            [m["class"] for m in sidecar["modules"]])


def _shard_bytes(size: int | str | None) -> int | None:
    if size is None:
        return None
    try:
        return parse_size(size)
    except ValueError as exc:
        raise ConvertError(str(exc)) from None


def plan_in_memory(src: str | os.PathLike) -> Any:
    """The conversion plan (sidecar and entries) for `src`, without writing anything."""
    src = Path(src)
    with Input(src) as inp:
        result = read_tree(inp)
        return make_plan(result.root, _provenance(src, inp, result))


def _provenance(src: Path, inp: Input, result: Any, sha256: str | None = None) -> dict:
    return {
        "converter": {"name": "ckpt-convert", "version": __version__},
        "name": src.name, "size": inp.size, "sha256": sha256 or sha256_fd(inp._file.fileno(), inp.size),
        "format": result.format, "pickle_protocol": result.protocol,
    }


def read_checkpoint(path: str | os.PathLike) -> Any:
    """A safe stand-in for `torch.load(path)`: the same tree, without running anything from the file.

    nn.Modules come back as their state_dict; unknown classes as inert `ObjectRecord`s.

    Example:
        >>> sd = read_checkpoint("model.pth")   # doctest: +SKIP
    """
    from .read.materialize import materialize  # torch: here, not at import, so convert/scan run without it

    with Input(path) as inp:
        return materialize(read_tree(inp).root)


def scan_checkpoint(path: str | os.PathLike) -> ScanReport:
    """List the globals a checkpoint names and the known code-execution gadgets among them.

    Raises MalformedCheckpoint/UnsupportedValue for files that cannot be read at all.
    """
    path = Path(path)
    with Input(path) as inp:
        try:
            result = read_tree(inp)
        except UnsafeCheckpoint as exc:
            return ScanReport(path, getattr(exc, "format", None), sorted(getattr(exc, "globals_used", {})), exc.findings)
    return ScanReport(path, result.format, sorted(result.globals_used))


def verify_checkpoint(src: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """Differences between `src` (read safely) and the converted `folder`; empty means equivalent."""
    from .compare import compare_trees  # torch: here, not at import, so convert/scan run without it
    from .load import load_checkpoint, read_sidecar
    from .read.materialize import materialize

    sidecar = read_sidecar(Path(folder))
    with Input(src) as inp:  # one open: the hash and the tree are of the same file
        digest = sha256_fd(inp._file.fileno(), inp.size)  # pread, not the mmap: RSS stays flat
        original = materialize(read_tree(inp).root)
    diffs = []
    if sidecar["source"]["sha256"] != digest:
        diffs.append(f"<source>: {folder} was converted from a different file (sha256 differs)")
    converted = load_checkpoint(folder)
    return diffs + compare_trees(original, converted)


__all__ = ["ConversionReport", "ConvertError", "ScanReport", "convert_checkpoint", "read_checkpoint",
           "scan_checkpoint", "verify_checkpoint"]
