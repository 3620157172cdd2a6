"""Tensor names of the exported file: flattening, prefixes, duplicates, and tied (shared) tensors.

Tied tensors are saved once, with the rule `safetensors.torch.save_model` applies
(`_remove_duplicate_names`), reimplemented over the reader's storage identity and byte ranges:
- tensors group by storage, then split into runs of overlapping byte ranges (`_filter_shared_not_shared`);
- in a run of two or more, the names that cover their whole storage are candidates to keep; the one
  kept is the first in sorted order, preferring names that are not a known tied *target*
  (TIED_TARGETS: the names `transformers` models list in `_tied_weights_keys`, which
  `save_pretrained` drops and `from_pretrained` re-ties, e.g. GPT-2's `lm_head.weight`);
- every other name of the run is dropped (and reported); a run where no name covers the whole
  storage is kept whole, each tensor written as its own contiguous copy (safetensors refuses those).
Tensors that share a storage without overlapping are each written as their own contiguous bytes.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConvertError
from ..model.records import ModuleRecord, NdArrayRef, TensorRef, Unsupported

# transformers' tied targets (the keys of `_tied_weights_keys`), matched as whole trailing components
TIED_TARGETS = ("lm_head.weight", "lm_head.decoder.weight", "lm_head.decoder.bias", "cls.predictions.decoder.weight",
                "cls.predictions.decoder.bias", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                "proj_out.weight", "output_projection.weight", "embed_out.weight", "generator_lm_head.weight",
                "lm_head.out_proj.weight", "head.decoder.weight", "pred_layer.proj.weight", "vocab_projector.weight")
_DICTS = (dict, collections.OrderedDict)


@dataclass
class Names:
    """The tensors to write, by final name, and what was left out (for the summary)."""

    tensors: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # dropped tied name → the name kept
    skipped: list[str] = field(default_factory=list)  # non-tensor entries of the state dict


def flatten(state_dict: dict) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, tensor) pairs, nested dicts joined with "."; and the names of non-tensor values left out."""
    pairs: list[tuple[str, Any]] = []
    skipped: list[str] = []

    def walk(node: dict, prefix: str, depth: int) -> None:
        for key, value in node.items():
            if type(key) is not str and type(key) is not int:  # a tuple, a record...: no tensor name
                skipped.append(f"{prefix}<{type(key).__name__} key>")
                continue
            name = f"{prefix}{key}"
            if isinstance(value, ModuleRecord):
                value = value.state_dict
            if isinstance(value, (TensorRef, NdArrayRef)):
                pairs.append((name, value))
            elif isinstance(value, Unsupported):
                raise ConvertError(f"{name}: {value.reason}")
            elif type(value) in _DICTS and depth < 16:
                walk(value, f"{name}.", depth + 1)
            else:
                skipped.append(name)

    walk(state_dict, "", 0)
    return pairs, skipped


def rename(pairs: list[tuple[str, Any]], strip_prefix: str | None, add_prefix: str | None) -> dict[str, Any]:
    """Apply --strip-prefix (to the names that start with it) then --add-prefix; refuse duplicate names."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in pairs:
        new = name[len(strip_prefix):] if strip_prefix and name.startswith(strip_prefix) else name
        new = f"{add_prefix or ''}{new}"
        if not new or new == "__metadata__":
            raise ConvertError(f"tensor {name!r} would be named {new!r}, which safetensors cannot hold; "
                               "change --strip-prefix/--add-prefix")
        if new in out:
            raise ConvertError(f"two tensors would both be named {new!r} ({origin[new]!r} and {name!r}); "
                               "change --strip-prefix/--add-prefix or pick another --key")
        out[new], origin[new] = value, name
    return out


def _is_tied_target(name: str) -> bool:
    return any(name == t or name.endswith("." + t) for t in TIED_TARGETS)


def _span(ref: TensorRef) -> tuple[int, int]:
    """[data_ptr, end_ptr) relative to the storage, as safetensors' `_end_ptr` computes it."""
    size = ref.dtype.itemsize
    start = ref.offset * size
    if ref.numel == 0:
        return start, start
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    return start, last * size + size


def _is_complete(ref: TensorRef) -> bool:
    return ref.offset == 0 and ref.numel * ref.dtype.itemsize == ref.storage.nbytes


def shared_runs(tensors: dict[str, Any]) -> list[set[str]]:
    """safetensors' `_find_shared_tensors`: groups of names whose tensors overlap in one storage."""
    by_storage: dict[int, list[str]] = collections.defaultdict(list)
    for name, ref in tensors.items():
        if isinstance(ref, TensorRef) and ref.storage.nbytes:
            by_storage[id(ref.storage)].append(name)
    runs: list[set[str]] = []
    for names in by_storage.values():
        if len(names) < 2:
            continue
        areas = sorted((*_span(tensors[n]), n) for n in names)
        _, last_stop, last_name = areas[0]
        group = {last_name}
        for start, stop, name in areas[1:]:
            if start >= last_stop:
                runs.append(group)
                group = {name}
            else:
                group.add(name)
            last_stop = stop  # as safetensors does (not the maximum)
        runs.append(group)
    return [run for run in runs if len(run) > 1]


def dedupe(tensors: dict[str, Any]) -> dict[str, str]:
    """The names to drop, each → the name kept in its place (safetensors' `_remove_duplicate_names`)."""
    dropped: dict[str, str] = {}
    for run in shared_runs(tensors):
        complete = {n for n in run if _is_complete(tensors[n])}
        if not complete:
            continue  # no name stands for the storage: each is written as its own copy
        preferred = {n for n in complete if not _is_tied_target(n)}
        keep = sorted(preferred or complete)[0]
        for name in sorted(run - {keep}):
            dropped[name] = keep
    return dropped


def export_names(state_dict: dict, strip_prefix: str | None = None, add_prefix: str | None = None) -> Names:
    pairs, skipped = flatten(state_dict)
    tensors = rename(pairs, strip_prefix, add_prefix)
    dropped = dedupe(tensors)
    return Names({n: v for n, v in tensors.items() if n not in dropped}, dropped, skipped)
