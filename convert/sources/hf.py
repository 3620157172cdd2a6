"""Hugging Face model folders as a Source: `config.json` + `pytorch_model.bin` (or its shards and index).

The weights become what `transformers.from_pretrained` loads: `model.safetensors` (or
`model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, one output shard per input
shard) plus our `checkpoint.json`. The folder's other top-level files (config.json, tokenizer files)
are `copy_files`: copied into the output and sealed by its checkpoint.json. Subfolders and other
pickles are the unit's business (`ops/units.py`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConvertError, MalformedCheckpoint
from ..model.records import ModuleRecord
from ..primitives.hashing import PENDING_SHA256, BackgroundSha256
from ..read import Input, read_tree
from ..sidecar.jsonio import strict_json
from ..write.plan import is_state_dict
from ..write.safetensors_io import KernelCopySource
from ..write.shards import shard_name
from .base import Source, file_source
from .discover import HF_INDEX as INDEX
from .discover import HF_SINGLE as SINGLE
from .discover import is_hf_folder  # noqa: F401 (re-exported)

MAX_INDEX_BYTES = 64 << 20
_SHARD = re.compile(r"^pytorch_model-\d{5}-of-\d{5}\.bin$")


def _shard_names(index: Input) -> list[str]:
    if index.size > MAX_INDEX_BYTES:
        raise MalformedCheckpoint(f"{index.path}: too large")
    data = strict_json(index.read(0, index.size), INDEX)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise MalformedCheckpoint(f"{index.path}: no weight_map")
    names = sorted(set(weight_map.values()))
    if not names or not all(_SHARD.match(n) for n in names):
        raise MalformedCheckpoint(f"{index.path}: shard names must look like pytorch_model-00001-of-00002.bin")
    return names


def hf_checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder, in shard order (checked to be plain names inside it)."""
    if (folder / INDEX).is_file():
        with Input(folder / INDEX) as index:
            return [folder / n for n in _shard_names(index)]
    return [folder / SINGLE]


def weight_names(folder: Path) -> set[str]:
    """The names of an HF folder's weight files and index (what `HfSource` converts)."""
    return {p.name for p in hf_checkpoint_files(folder)} | {INDEX}


class HfSource(Source):
    """The weights of an HF folder, merged into one state dict (each key keeps its input shard).

    Every weight file (and the index) is opened like any source and hashed on a thread while it is
    converted; `seal` checks each unchanged. Every weight file must hold a bare state dict.

    Args:
        path: the HF folder. copy_files: its files copied into the output as they are.
        hash: compute the sha256 fields (False for `read`).
    """

    kind = "hf"

    def __init__(self, path: str | os.PathLike, *, copy_files: list[Path] | None = None, hash: bool = True) -> None:
        self.path = Path(path)
        self.copy_files = list(copy_files or [])
        self._stack = contextlib.ExitStack()
        try:
            self._open(hash)
        except BaseException as exc:  # Input words a failure caused by a rewrite as SourceChanged
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def _open(self, hash: bool) -> None:
        sharded = (self.path / INDEX).is_file()
        self.named = self._stack.enter_context(Input(self.path / (INDEX if sharded else SINGLE), converting=True))
        names = _shard_names(self.named) if sharded else [SINGLE]
        self.inputs = [self.named] if not sharded else \
            [self._stack.enter_context(Input(self.path / n, converting=True)) for n in names]
        self._hashers = [self._stack.enter_context(BackgroundSha256(i.fileno(), i.size, i.path))
                         for i in ([self.named] if not sharded else [self.named, *self.inputs])] if hash else []
        merged: collections.OrderedDict = collections.OrderedDict()
        shards: dict[str, str] = {}
        first = None
        for i, inp in enumerate(self.inputs):
            result = read_tree(inp)
            first = first or result
            root = result.root.state_dict if isinstance(result.root, ModuleRecord) else result.root
            if not is_state_dict(root):
                raise ConvertError(f"{inp.name}: expected a state dict (str → tensor), found {type(root).__name__}")
            for key, value in root.items():
                if key in merged:
                    raise MalformedCheckpoint(f"{inp.name}: key {key!r} appears in two shards")
                merged[key] = value
                if sharded:
                    shards[key] = shard_name("model", i + 1, len(self.inputs))
        assert first is not None
        self.root, self.root_shards = merged, shards or None
        self.format, self.protocol = first.format, first.protocol
        self.kernel_copy_sources = [KernelCopySource(i.buf, i.fileno()) for i in self.inputs]

    def provenance(self) -> dict[str, Any]:
        source = file_source(self.named.name, self.named.size, self.format, self.protocol)
        if self.inputs[0] is not self.named:
            source["parts"] = [{"name": i.name, "size": i.size, "sha256": PENDING_SHA256} for i in self.inputs]
        return source

    def seal(self) -> dict[str, Any]:
        digests = [h.hexdigest() for h in self._hashers]
        for inp in {id(i): i for i in (self.named, *self.inputs)}.values():
            inp.check_unchanged()  # the hashes are of what was converted iff no file changed
        if not digests:
            return {}
        fields: dict[str, Any] = {"sha256": digests[0]}
        if self.inputs[0] is not self.named:
            fields["parts"] = [{"name": i.name, "size": i.size, "sha256": d} for i, d in zip(self.inputs, digests[1:])]
        return fields

    def close(self) -> None:
        self.root = None
        self._stack.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.root = None
        self._stack.__exit__(exc_type, exc, tb)
