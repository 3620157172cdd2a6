"""The one write pipeline shared by `convert_checkpoint` and `save_checkpoint`: tree → plan → validate → folder.

Both produce the same folder format with the same guarantees (atomic, deterministic, schema-valid,
tensor bytes streamed from where they are); they differ only in where the tree comes from (the safe
reader, or the user's live objects) and in the provenance recorded as the sidecar's `source`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ConvertError
from .schema import validate
from .write.folder import write_folder
from .write.plan import make_plan
from .write.safetensors_io import KernelCopySources
from .write.shards import parse_size
from .write.source_hash import PENDING_SHA256

LIVE_FORMAT = "live"


def provenance(source: dict[str, Any]) -> dict[str, Any]:
    """The provenance `make_plan` takes: who wrote the folder (`converter`) and what from (`source`).

    Args:
        source: the sidecar's `source` object (see `file_source` and `live_source`).

    Returns:
        A new dict: `source`'s fields plus `converter` (make_plan moves it to the sidecar's top level).
    """
    return {"converter": {"name": "ckpt-convert", "version": __version__}, **source}


def file_source(name: str, size: int, fmt: str, protocol: int, sha256: str | None = None) -> dict[str, Any]:
    """`source` for a converted file: base name, size, sha256 (PENDING until hashed), container format."""
    return {"name": name, "size": size, "sha256": sha256 or PENDING_SHA256, "format": fmt, "pickle_protocol": protocol}


def live_source() -> dict[str, Any]:
    """`source` for a folder saved from live Python objects: no file, only the torch that held them."""
    import torch  # only save_checkpoint (live tensors) gets here: convert needs no torch

    return {"format": LIVE_FORMAT, "torch": torch.__version__.split("+")[0]}


def shard_bytes(size: int | str | None) -> int | None:
    """`max_shard_size` as bytes ("5GB", "500MiB" or an int); None means one file per state dict."""
    if size is None:
        return None
    try:
        return parse_size(size)
    except ValueError as exc:
        raise ConvertError(str(exc)) from None


def write_checkpoint_folder(root: Any, dst: str | os.PathLike, *, provenance: dict[str, Any],
                            overwrite: bool = False, max_shard_size: int | str | None = None,
                            kernel_copy_source: KernelCopySources = None,
                            complete_source: Callable[[], dict[str, Any]] | None = None,
                            copy_files: Sequence[Path] = (),
                            sources: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Plan the record tree `root`, validate the sidecar, and write the folder `dst` atomically.

    Args:
        root: a tree of the reader's records (TensorRef, ObjectRecord, ModuleRecord, ...) and plain values.
        dst: the folder to create (complete or not at all).
        provenance: from `provenance(...)`; consumed (make_plan takes `converter` out of it).
        overwrite: replace an existing `dst`; otherwise OutputExists.
        max_shard_size: split state dicts larger than this ("5GB", "500MiB" or bytes) into shards.
        kernel_copy_source: the input file that entry sources point into (copied file-to-file), if any.
        complete_source: called after the data files are written, before the sidecar: fields of
            `source` known only then (the sha256 computed meanwhile on a thread replaces the PENDING
            placeholder; a DCP folder adds its parts).
        copy_files: files copied into the folder as they are.
        sources: the files or folders read (an overwrite never replaces them nor a folder holding them).

    Returns:
        The sidecar written as checkpoint.json.
    """
    plan = make_plan(root, provenance, max_shard_size=shard_bytes(max_shard_size))
    validate(plan.sidecar, "generated sidecar")  # a writer bug must never produce an unloadable folder

    def fill_in_source() -> None:
        if complete_source is not None:
            plan.sidecar["source"].update(complete_source())

    write_folder(plan, Path(dst), overwrite=overwrite, copy_files=list(copy_files), before_sidecar=fill_in_source,
                 kernel_copy_source=kernel_copy_source, sources=sources)
    return plan.sidecar
