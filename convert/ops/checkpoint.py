"""The public operations on a path of any input kind: convert, verify, read, inspect (plan).

A path is a checkpoint file, a DCP folder, or a unit folder (HF model, Trainer/Accelerate): each is
opened as its Source (`sources/`), and a unit whose folder holds more than one checkpoint goes
through `units.py`, whose members are Sources too. convert and scan import no torch; read and
verify hand back or compare torch tensors, so they import the torch side when called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConvertError, require_torch
from ..primitives.source import open_regular
from ..sign.context import Signer, signing
from ..sources.base import Source
from ..sources.dcp_folder import DcpSource
from ..sources.dcp_metadata import is_dcp_folder
from ..sources.discover import classify
from ..sources.file import FileSource
from ..sources.hf import HfSource
from ..write.plan import make_plan
from .convert import ConversionReport, convert, precheck, report_of, sidecars_under
from .pipeline import provenance, shard_bytes
from .units import convert_unit, verify_unit
from .verify import verify_source


def kind_of(path: Path) -> str:
    """"file", "dcp", "hf" or "framework": what `discover.classify` says (as scan and migrate see it).

    Beyond it: a folder with a `.metadata` but no part is opened as DCP (its reader says what is
    missing), and anything else as a file (a name no checkpoint has is still read, by content, or refused).
    """
    kind = classify(path)
    if kind is None and is_dcp_folder(path):
        return "dcp"
    return kind or "file"


def open_source(path: str | os.PathLike, *, kind: str | None = None, converting: bool = False,
                hash: bool = True, salvage: bool = False) -> Source:
    """The Source of one checkpoint (a file, a DCP folder, an HF folder's weights)."""
    path = Path(path)
    kind = kind or kind_of(path)
    if kind == "dcp":
        return DcpSource(path, hash=hash, converting=converting)
    if kind == "hf":
        return HfSource(path, hash=hash)
    if kind == "framework":
        raise ConvertError(f"{path} is a Trainer/Accelerate checkpoint folder: convert or verify it whole, "
                           "or read its files one by one")
    return FileSource(path, converting=converting, hash=hash, salvage=salvage)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                       max_shard_size: int | str | None = None, kind: str | None = None,
                       root: str | os.PathLike | None = None, salvage: bool = False,
                       sign: Signer | str | os.PathLike | None = None) -> ConversionReport:
    """Convert a pickled checkpoint file, a torch.distributed.checkpoint folder, a Hugging Face model
    folder or a Trainer/Accelerate checkpoint folder to a folder of safetensors files plus `checkpoint.json`.

    Nothing in `src` is executed. The folder appears atomically, complete or not at all.
    Raises UnsafeCheckpoint (the file names code-execution gadgets), MalformedCheckpoint or
    UnsupportedValue, or OutputExists if `dst` exists and `overwrite` is False.
    `max_shard_size` ("5GB", "500MiB" or bytes) splits larger state dicts into
    `NAME-00001-of-0000N.safetensors` shards with a `NAME.safetensors.index.json`.
    `kind` ("file", "dcp", "hf", "framework") and `root` (symlinks resolving inside it are followed)
    are what `sources.discover` found, for callers that walked a tree (migrate).
    `salvage=True` converts a file that names code instead of refusing it: each call that would have run
    code is kept as an inert record (`via: "salvaged-call"`), and the sidecar's `source` says
    `salvaged: true` and lists them in `neutralised_calls` (nothing is executed either way).

    `sign` (a private key's path or a convert.sign.Signer; needs `ckpt-convert[sign]`) signs the
    folder before it appears: `model.sig`, OpenSSF model-signing format.

    Example:
        >>> convert_checkpoint("old/checkpoint.pth", "new/checkpoint")   # doctest: +SKIP
    """
    if sign is not None:
        with signing(sign):
            return convert_checkpoint(src, dst, overwrite=overwrite, max_shard_size=max_shard_size, kind=kind,
                                      root=root, salvage=salvage)
    src, dst = Path(src), Path(dst)
    shard_bytes(max_shard_size)  # a bad size is refused before anything is read
    kind = kind or kind_of(src)
    if kind in ("hf", "framework") or (kind == "dcp" and root is not None):  # a unit: every file of it
        precheck(dst, [src], overwrite)
        unit = convert_unit(kind, src, dst, root=root, overwrite=overwrite, max_shard_size=max_shard_size)
        return report_of(src, dst, sidecars_under(dst), kind=kind, sha256=unit["sha256"],
                         converted=unit["converted"], copied=unit["copied"], skipped=unit["skipped"])
    if kind == "file" and src.is_dir():  # a folder that is no checkpoint: said as such, before any DST check
        os.close(open_regular(src)[0])  # raises the one wording ("...: is a folder, not a regular file")
    precheck(dst, [src], overwrite)  # before reading a possibly large source (the writer checks again)
    with open_source(src, kind=kind, converting=True, salvage=salvage) as source:
        return convert(source, dst, overwrite=overwrite, max_shard_size=max_shard_size)


def plan_in_memory(src: str | os.PathLike) -> Any:
    """The conversion plan (sidecar and entries) for `src` (a file, DCP or HF folder), without writing anything."""
    with open_source(src, hash=False) as source:
        plan = make_plan(source.root, provenance(source.provenance()), root_shards=source.root_shards)
        source.seal()
        return plan


def read_checkpoint(path: str | os.PathLike) -> Any:
    """A safe stand-in for `torch.load(path)`: the same tree, without running anything from the file.

    nn.Modules come back as their state_dict; unknown classes as inert `ObjectRecord`s. A DCP folder
    reads as `dcp_to_torch_save` + `torch.load` would give; an HF folder as its merged state dict.

    Example:
        >>> sd = read_checkpoint("model.pth")   # doctest: +SKIP
    """
    require_torch("read_checkpoint")
    from ..read.materialize import materialize  # torch: here, not at import, so convert/scan run without it

    with open_source(path, hash=False) as source:
        tree = materialize(source.root)
        source.seal()
        return tree


def verify_checkpoint(src: str | os.PathLike, folder: str | os.PathLike, *, kind: str | None = None,
                      root: str | os.PathLike | None = None) -> list[str]:
    """Differences between `src` (read safely) and the converted `folder`; empty means equivalent.

    Compares trees (values and sharing) and the provenance recorded (sha256 of every file read);
    a unit folder is compared file by file (copies byte for byte). The folder's own integrity record
    (digests) is checked by `verify_folder`. A folder mixing files of different conversions raises
    CorruptFolder (it cannot be loaded).
    """
    require_torch("verify_checkpoint (verifying against the source)")
    src = Path(src)
    kind = kind or kind_of(src)
    if kind in ("hf", "framework") or (kind == "dcp" and root is not None):
        return verify_unit(kind, src, folder, root=root)
    with open_source(src, kind=kind, salvage=_was_salvaged(folder)) as source:  # read as the folder was written
        return verify_source(source, folder)


def _was_salvaged(folder: str | os.PathLike) -> bool:
    """Whether `folder` was converted with `salvage=True` (its source is then re-read the same way)."""
    from ..sidecar.schema import read_sidecar

    try:
        return read_sidecar(Path(folder))["source"].get("salvaged") is True
    except ConvertError:
        return False  # verify reports the folder's own problem


__all__ = ["ConversionReport", "convert_checkpoint", "open_source", "plan_in_memory", "read_checkpoint",
           "verify_checkpoint"]
