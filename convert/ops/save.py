"""`save_checkpoint`: live Python objects → a checkpoint folder, without writing a pickle.

    >>> save_checkpoint({"epoch": 5, "model_state_dict": model.state_dict()}, "ckpts/epoch5")  # doctest: +SKIP
    >>> ck = load_checkpoint("ckpts/epoch5")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..sign.context import Signer, signing
from ..sources.live import LiveSource, live_tree
from .convert import ConversionReport, precheck
from .convert import convert as convert_source

__all__ = ["SaveReport", "live_tree", "save_checkpoint"]


class SaveReport(ConversionReport):
    """What `save_checkpoint` wrote: a ConversionReport (source None, kind "live")."""


def save_checkpoint(obj: Any, folder: str | os.PathLike, *, overwrite: bool = False,
                    max_shard_size: int | str | None = None, sign: Signer | str | os.PathLike | None = None
                    ) -> SaveReport:
    """Save `obj` (what you would pass to torch.save) as a folder of safetensors files plus `checkpoint.json`.

    The folder is the one `convert_checkpoint(torch.save(obj))` would give, and `load_checkpoint`
    returns the same tree; nothing in it is a pickle. It appears atomically (complete or not at all)
    and saving the same objects twice gives byte-identical folders. Tensor bytes go from the tensors'
    memory to the files without extra copies; CUDA tensors through a bounded pinned host buffer.
    nn.Modules are stored as their state_dict with their class path; objects of other classes
    (argparse.Namespace, dataclasses, enums, configs) as inert records of their `__reduce_ex__` state.

    Args:
        obj: tensors, Parameters, containers, numbers, strings, bytes, numpy values, torch.Size, dtypes,
            devices, RNG states, nn.Modules, and plain objects of other classes.
        folder: the folder to create.
        overwrite: replace an existing folder (atomically); otherwise OutputExists.
        max_shard_size: split state dicts larger than this ("5GB", "500MiB" or bytes) into shards.
        sign: a private key's path or a convert.sign.Signer: the folder appears with its signature
            `model.sig` (OpenSSF model-signing format; needs `ckpt-convert[sign]`).

    Returns:
        A SaveReport: the files written, tensor/array counts, bytes, module classes.

    Raises:
        OutputExists, UnsupportedValue (a value with no lossless encoding, named by its path),
        UnsafeCheckpoint (the objects name a code-execution gadget, which convert would refuse),
        ConvertError (the file system refused: full disk, read-only, ...).

    Example:
        >>> save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict()}, "ckpts/step100")  # doctest: +SKIP
    """
    if sign is not None:
        with signing(sign):
            return save_checkpoint(obj, folder, overwrite=overwrite, max_shard_size=max_shard_size)
    dst = Path(folder)
    precheck(dst, (), overwrite)
    report = convert_source(LiveSource(obj, dst), dst, overwrite=overwrite, max_shard_size=max_shard_size)
    return SaveReport(**vars(report))
