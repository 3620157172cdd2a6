"""Hugging Face model folders: `config.json` + `pytorch_model.bin` (or its shards and index).

The weights become what `transformers.from_pretrained` loads: `model.safetensors` (or
`model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, one output shard per input
shard) plus our `checkpoint.json`; the rest of the folder is handled by `units.py` (the unit is whole).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path
from typing import Any

from .._version import __version__
from ..discover import HF_INDEX as INDEX
from ..discover import HF_SINGLE as SINGLE
from ..discover import is_hf_folder  # noqa: F401 (re-exported)
from ..errors import ConvertError, MalformedCheckpoint
from ..jsonio import strict_json
from ..read import Input, read_tree
from ..read.records import ModuleRecord
from ..schema import validate
from ..write.folder import write_folder
from ..write.plan import Plan, is_state_dict, make_plan
from ..write.shards import shard_name
from ..write.source_hash import sha256_fd

_SHARD = re.compile(r"^pytorch_model-\d{5}-of-\d{5}\.bin$")
MAX_INDEX_BYTES = 64 << 20


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


def weight_names(folder: Path) -> set[str]:
    """The names of an HF folder's weight files and index (what `hf_plan` converts)."""
    return {p.name for p in hf_checkpoint_files(folder)} | {INDEX}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_fd(f.fileno(), os.fstat(f.fileno()).st_size)


def hf_plan(src: Path, stack: contextlib.ExitStack) -> Plan:
    """The plan of an HF folder's weights (merged into model.safetensors or one shard per input shard).

    Every weight file must hold a bare state dict; the inputs stay open on `stack` while the plan is written.
    """
    files = hf_checkpoint_files(src)
    merged: collections.OrderedDict = collections.OrderedDict()
    shards: dict[str, str] = {}
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
    return plan


def write_hf_weights(src: Path, dst: Path) -> dict:
    """Write the converted weights of the HF folder `src` as the new folder `dst`; returns the sidecar."""
    with contextlib.ExitStack() as stack:
        plan = hf_plan(src, stack)
        write_folder(plan, dst, sources=[src])
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


def convert_hf_folder(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> dict:
    """Convert an HF folder whole (weights, other files, module subfolders) into `dst`: see `units.convert_unit`."""
    from .units import convert_unit

    return convert_unit("hf", src, dst, overwrite=overwrite)
