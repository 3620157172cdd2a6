"""Splitting a large state dict over several safetensors files, the way huggingface_hub does.

Shards are named `STEM-00001-of-0000N.safetensors`, with `STEM.safetensors.index.json` holding
`{"metadata": {"total_size": ...}, "weight_map": {key: shard}}`. Tensors that share a storage
stay in one shard, so a shard never needs another to rebuild its views.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..model.records import TensorRef

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' → 5_000_000_000, '500MiB' → 524288000, 1024 → 1024."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 2GiB)")
        size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError(f"shard size must be positive, got {text!r}")
    return size


def shard_name(stem: str, index: int, count: int) -> str:
    return f"{stem}-{index:05d}-of-{count:05d}.safetensors"


def assign_shards(state_dict: dict[str, Any], stem: str, max_bytes: int) -> dict[str, str] | None:
    """Key → shard file, greedily in key order; None if the state dict fits in one file."""
    groups: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for key, ref in state_dict.items():
        group = id(ref.storage) if isinstance(ref, TensorRef) else id(ref)
        groups.setdefault(group, []).append(key)
        sizes[group] = sizes.get(group, 0) + (ref.numel * ref.dtype.itemsize if isinstance(ref, TensorRef) else 0)
    if sum(sizes.values()) <= max_bytes:
        return None
    shards: list[list[str]] = [[]]
    filled = 0
    for group, keys in groups.items():
        if shards[-1] and filled + sizes[group] > max_bytes:
            shards.append([])
            filled = 0
        shards[-1].extend(keys)
        filled += sizes[group]
    return {key: shard_name(stem, i + 1, len(shards)) for i, keys in enumerate(shards) for key in keys}


def index_bytes(weight_map: dict[str, str], total_size: int) -> bytes:
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    return (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
