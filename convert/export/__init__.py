"""`ckpt-convert export`: a checkpoint's model weights as one plain `model.safetensors` (or HF shards).

    select.py   which state dict (--key, or the default order)
    names.py    flattening, prefixes, duplicate names, tied tensors saved once
    cast.py     --dtype, bit-exact with torch, without torch
    sources.py  SRC: file, DCP folder, Trainer/Accelerate/HF folder
    write.py    streaming, atomic writing of the file or the shards + index
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvertError
from ..ops.convert import precheck
from ..write.shards import parse_size
from .cast import DTYPE_CODES
from .names import export_names
from .select import select_state_dict
from .sources import open_source
from .write import make_entries, metadata, write_file, write_sharded


@dataclass
class ExportReport:
    """What `export_weights` wrote."""

    source: Path
    destination: Path
    key: str  # where the state dict was found ("" for the root)
    files: dict[str, int]  # file → tensors
    tensors: int
    bytes: int
    cast: int = 0  # tensors cast by `dtype`
    dropped: dict[str, str] = field(default_factory=dict)  # tied names not written → the name kept
    skipped: list[str] = field(default_factory=list)  # non-tensor entries of the state dict


def export_weights(src: str | os.PathLike, out: str | os.PathLike, *, key: str | None = None,
                   strip_prefix: str | None = None, add_prefix: str | None = None, dtype: str | None = None,
                   max_shard_size: int | str | None = None, overwrite: bool = False) -> ExportReport:
    """Write the model state dict of `src` as the plain safetensors file `out` (or, with `max_shard_size`,
    the folder `out` holding `model.safetensors` or `model-0000N-of-0000M.safetensors` + its index).

    Nothing in `src` is executed and torch is not needed. `key` picks the state dict ("state_dict",
    "ema", "model.ema", ...; default: the root if it is one, else the first of select.DEFAULT_KEYS).
    Tied tensors are written once (names.py); `dtype` ("fp16", "bf16", "fp32") casts floating tensors.
    `overwrite` replaces `out` only if an earlier export wrote it (`write.ownership.check_replaceable`),
    never `src` nor a folder holding it.

    Example:
        >>> export_weights("last.ckpt", "model.safetensors", strip_prefix="model.")   # doctest: +SKIP
    """
    src, out = Path(src), Path(out)
    target = None
    if dtype is not None:
        target = DTYPE_CODES.get(dtype.lower())
        if target is None:
            raise ConvertError(f"--dtype {dtype!r}: use fp16, bf16 or fp32")
    try:
        max_bytes = None if max_shard_size is None else parse_size(max_shard_size)
    except ValueError as exc:
        raise ConvertError(str(exc)) from None
    if max_bytes is None and out.suffix != ".safetensors":
        raise ConvertError(f"{out}: the output file must end in .safetensors (or pass --max-shard-size for a folder)")
    precheck(out, [src], overwrite, file=max_bytes is None)  # before reading a possibly large source (and again when written)
    with open_source(src) as source:
        state_dict, path = select_state_dict(source.root, key)
        names = export_names(state_dict, strip_prefix, add_prefix)
        if not names.tensors:
            raise ConvertError(f"{path or 'the root'} of {src} holds no tensors; pass --key PATH")
        entries, cast = make_entries(names.tensors, target)
        meta = metadata(names.dropped)
        if max_bytes is None:
            write_file(out, entries, meta, source.kernel, source.digest, overwrite=overwrite, sources=[src])
            files = {out.name: len(entries)}
        else:
            files = write_sharded(out, entries, meta, source.kernel, source.digest, max_bytes, overwrite=overwrite,
                                  sources=[src])
    return ExportReport(src, out, path, files, len(entries), sum(e.nbytes for e in entries), cast,
                        names.dropped, names.skipped)


__all__ = ["ExportReport", "export_weights"]
