"""Hugging Face model folders: `config.json` + `pytorch_model.bin` (or its shards and index).

The result is a folder `transformers.from_pretrained` loads: `model.safetensors` (or
`model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, one output shard per input
shard), the folder's other files copied (config, tokenizer, ...), plus our `checkpoint.json`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConvertError, MalformedCheckpoint
from ..jsonio import strict_json
from ..read import Input, read_tree
from ..read.records import ModuleRecord
from ..schema import validate
from ..write.folder import write_folder
from ..write.plan import is_state_dict, make_plan
from ..write.shards import shard_name
from ..write.source_hash import sha256_fd

SINGLE = "pytorch_model.bin"
INDEX = "pytorch_model.bin.index.json"
_SHARD = re.compile(r"^pytorch_model-\d{5}-of-\d{5}\.bin$")
MAX_INDEX_BYTES = 64 << 20


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and ((folder / SINGLE).is_file() or (folder / INDEX).is_file())


def hf_checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder, in shard order (checked to be plain names inside it)."""
    if (folder / INDEX).is_file():
        if (folder / INDEX).stat().st_size > MAX_INDEX_BYTES:
            raise MalformedCheckpoint(f"{folder / INDEX}: too large")
        index = strict_json((folder / INDEX).read_bytes(), INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MalformedCheckpoint(f"{folder / INDEX}: no weight_map")
        names = sorted(set(weight_map.values()))
        if not names or not all(_SHARD.match(n) for n in names):
            raise MalformedCheckpoint(f"{folder / INDEX}: shard names must look like pytorch_model-00001-of-00002.bin")
        return [folder / n for n in names]
    return [folder / SINGLE]


def copied_files(folder: Path) -> list[Path]:
    """Everything else in the folder (config, tokenizer, generation config, ...), not the weights."""
    weights = {p.name for p in hf_checkpoint_files(folder)} | {INDEX}
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.is_symlink() and p.name not in weights and not p.name.startswith("."))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_fd(f.fileno(), os.fstat(f.fileno()).st_size)


def convert_hf_folder(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> dict:
    """Convert an HF folder; returns the sidecar. Every weight file must hold a bare state dict."""
    src, dst = Path(src), Path(dst)
    files = hf_checkpoint_files(src)
    merged: collections.OrderedDict = collections.OrderedDict()
    shards: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        results = []
        for i, path in enumerate(files):
            inp = stack.enter_context(Input(path))
            result = read_tree(inp)
            root = result.root.state_dict if isinstance(result.root, ModuleRecord) else result.root
            if not is_state_dict(root):
                raise ConvertError(f"{path.name}: expected a state dict (str → tensor), found {type(root).__name__}")
            for key, value in root.items():
                if key in merged:
                    raise MalformedCheckpoint(f"{path.name}: key {key!r} appears in two shards")
                merged[key] = value
                if len(files) > 1:
                    shards[key] = shard_name("model", i + 1, len(files))
            results.append((path, inp, result))
        first = results[0][2]
        named = src / (INDEX if len(files) > 1 else SINGLE)
        provenance: dict[str, Any] = {
            "converter": {"name": "ckpt-convert", "version": __version__},
            "name": named.name, "size": named.stat().st_size, "sha256": _sha256(named),
            "format": first.format, "pickle_protocol": first.protocol,
        }
        if len(files) > 1:
            provenance["parts"] = [{"name": p.name, "size": i.size, "sha256": sha256_fd(i._file.fileno(), i.size)}
                                   for p, i, _ in results]
        plan = make_plan(merged, provenance, root_shards=shards or None)
        validate(plan.sidecar, "generated sidecar")
        write_folder(plan, dst, overwrite=overwrite, copy_files=copied_files(src), sources=[src])
    return plan.sidecar


def verify_hf_folder(src: str | Path, dst: str | Path) -> list[str]:
    """Differences between each weight file of `src` (read safely) and the converted folder."""
    from ..api import read_checkpoint
    from ..compare import compare_trees
    from ..load import load_checkpoint

    loaded = load_checkpoint(dst)
    diffs: list[str] = []
    seen = 0
    for path in hf_checkpoint_files(Path(src)):
        original = read_checkpoint(path)
        part = collections.OrderedDict((k, loaded[k]) for k in original if k in loaded)
        if list(part) != list(original):
            diffs.append(f"{path.name}: keys missing from the converted folder")
            continue
        seen += len(part)
        diffs += [f"{path.name}: {d}" for d in compare_trees(collections.OrderedDict(original), part)
                  if "<_metadata>" not in d and "attributes" not in d]
    if seen != len(loaded):
        diffs.append(f"the converted folder has {len(loaded) - seen} keys no weight file has")
    return diffs
