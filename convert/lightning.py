"""A Lightning `CheckpointIO` plugin: checkpoints become folders of safetensors + checkpoint.json, not pickles.

    >>> from convert.lightning import SafetensorsCheckpointIO                       # doctest: +SKIP
    >>> trainer = L.Trainer(plugins=[SafetensorsCheckpointIO()],
    ...                     callbacks=[ModelCheckpoint(save_top_k=2, monitor="val_loss")])   # doctest: +SKIP
    >>> trainer.fit(model, ckpt_path="checkpoints/epoch=3-step=400.ckpt")          # doctest: +SKIP

Lightning names checkpoints `NAME.ckpt`; with this plugin that name is a folder (written by
`save_checkpoint`, atomically). `ModelCheckpoint`, `save_top_k`, `ckpt_path=` resume and
`trainer.save_checkpoint` work unchanged. Loading also accepts old `.ckpt` files, read by the safe
reader (never `torch.load`): nothing in them runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from .api import read_checkpoint
from .load import load_checkpoint
from .model.tree import transform
from .ops.save import save_checkpoint
from .primitives.durable import NAME_MAX, fit_name
from .sign import Signer, TrustPolicy, check_trust
from .write.ownership import check_replaceable

__all__ = ["SafetensorsCheckpointIO"]


class SafetensorsCheckpointIO(CheckpointIO):
    """Save Lightning checkpoints with `save_checkpoint`, load them with `load_checkpoint`.

    Args:
        max_shard_size: split state dicts larger than this ("5GB", "500MiB" or bytes) into shards.
        sign_key: a private key's path (or a convert.sign.Signer): every checkpoint folder is written
            with its signature `model.sig` (OpenSSF model-signing; needs `ckpt-convert[sign]`).
        trust: a convert.sign.TrustPolicy that folders must satisfy to be loaded (resume included).
    """

    def __init__(self, max_shard_size: int | str | None = None, *, sign_key: Signer | str | os.PathLike | None = None,
                 trust: TrustPolicy | None = None) -> None:
        super().__init__()
        self.max_shard_size = max_shard_size
        self.sign_key, self.trust = sign_key, trust

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Write `checkpoint` as the folder `path` (an existing checkpoint there is replaced atomically).

        Args:
            checkpoint: the trainer's checkpoint dict.
            path: the folder to write (Lightning's `NAME.ckpt`).
            storage_options: not supported (TypeError), as in Lightning's TorchCheckpointIO.
        """
        if storage_options is not None:
            raise TypeError(f"`storage_options` is not supported by {type(self).__name__}")
        path = Path(path)
        if path.is_file() or path.is_symlink():  # an old pickled .ckpt of the same name: a folder takes its place
            path.unlink()
        # an existing folder is replaced only if it is a checkpoint holding nothing else (the writer's ownership rule)
        save_checkpoint(checkpoint, path, overwrite=True, max_shard_size=self.max_shard_size, sign=self.sign_key)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint folder, or a pickled `.ckpt` file through the safe reader (never torch.load).

        Args:
            path: a folder written by this plugin / save_checkpoint / convert, or a `.ckpt` file.
            map_location: a device (str or torch.device) for the tensors; a callable or dict (torch.load's
                other forms) means "where they were saved", i.e. the CPU here.
            weights_only: accepted for Lightning's interface; loading never runs code either way.

        Returns:
            The checkpoint dict.
        """
        path = Path(path)
        device = map_location if isinstance(map_location, (str, torch.device)) else None
        if path.is_dir():
            return load_checkpoint(path, map_location=device, trust=self.trust)
        if path.is_file():
            check_trust(path, self.trust)  # a pickled .ckpt carries no signature: refused unless allow_unsigned
            checkpoint = read_checkpoint(path)
            if device is not None and torch.device(device).type != "cpu":
                checkpoint = transform(checkpoint, lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)
            return checkpoint
        raise FileNotFoundError(f"Checkpoint file not found: {path}")

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Remove a checkpoint folder written by this plugin (or a `.ckpt` file); other folders are left alone."""
        path = Path(path)
        if path.is_dir() and not path.is_symlink():
            check_replaceable(path)  # the writer's ownership rule: a checkpoint folder holding nothing else
            # Rename first, so that a crash mid-way leaves a hidden leftover, never a half-removed checkpoint.
            doomed = path.with_name(f".{fit_name(path.name, NAME_MAX - 10)}.removing")
            shutil.rmtree(doomed, ignore_errors=True)
            os.rename(path, doomed)
            shutil.rmtree(doomed)
        elif path.exists() or path.is_symlink():
            path.unlink()

