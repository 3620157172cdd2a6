"""Open an export's SRC: a checkpoint file, a DCP folder, or a Trainer/Accelerate/HF folder's model weights.

Each yields the checkpoint tree (tensors are byte ranges of the input, nothing executed), the input
files the writer may copy from in the kernel, and a function giving the source's sha256 once the
data has been copied (for a file it is computed on a thread meanwhile).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError
from ..model.records import StorageRef, TensorRef
from ..model.torch_types import CANONICAL
from ..ops.checkpoint import kind_of
from ..ops.checkpoint import open_source as spine_open_source
from ..sidecar.schema import SIDECAR_NAME
from ..write.safetensors_io import KernelCopySource

# model weights of a Trainer / Accelerate unit or an HF model folder, in the order they are looked for
UNIT_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Source:
    root: Any
    kind: str  # "file", "torch-dcp", "hf-folder"
    kernel: list[KernelCopySource] = field(default_factory=list)
    digest: Callable[[], str] = lambda: ""
    files: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def open_source(src: Path) -> Iterator[Source]:
    """The export's view of SRC. A checkpoint file, a DCP folder, an HF folder or a Trainer/Accelerate
    unit's model weights are opened as the spine's Sources (`ops.checkpoint.open_source`: regular files
    only, no mapping, hashed on a thread, checked unchanged when sealed); a converted folder is loaded."""
    if src.is_dir() and (src / SIDECAR_NAME).is_file():
        yield _converted_folder(src)
        return
    kind = kind_of(src)
    if src.is_dir() and kind != "dcp":  # an HF folder, a Trainer/Accelerate unit, or any folder of model weights
        unit_weight_files(src)  # none there (or safetensors already): a clear error
        kind = "hf"  # its model weights, read as an HF folder's are
    with spine_open_source(src, kind=kind, converting=True) as source:
        kernel = source.kernel_copy_sources
        kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel] if kernel is not None else []
        root = source.root
        root = getattr(root, "state_dict", root) if kind != "dcp" else root
        yield Source(root, _KINDS.get(kind, kind), kernel, lambda: source.seal().get("sha256", ""), [src])


_KINDS = {"dcp": "torch-dcp", "hf": "hf-folder"}


def _converted_folder(folder: Path) -> Source:
    """A folder `convert` wrote: loaded lazily (mmap) with `load_checkpoint` (this input alone needs torch),
    its tensors described as the reader describes them, so the same selection and writer apply."""
    import torch

    from ..load import load_checkpoint, read_sidecar

    sidecar = read_sidecar(folder)
    tree = load_checkpoint(folder, map_location="cpu", verify=True)  # the integrity record is checked
    storages: dict[int, StorageRef] = {}

    def ref(t: torch.Tensor) -> TensorRef:
        untyped = t.untyped_storage()
        storage = storages.get(untyped.data_ptr())
        if storage is None:
            raw = torch.empty(0, dtype=torch.uint8).set_(untyped).numpy() if untyped.nbytes() else b""
            storage = storages[untyped.data_ptr()] = StorageRef(
                str(len(storages)), CANONICAL[str(t.dtype).removeprefix("torch.")], untyped.nbytes(), "cpu",
                buffer=memoryview(raw).cast("B"))
        return TensorRef(storage, CANONICAL[str(t.dtype).removeprefix("torch.")], t.storage_offset(), tuple(t.shape),
                         tuple(t.stride()))

    def walk(node: Any, depth: int = 0) -> Any:
        if isinstance(node, torch.Tensor):
            return ref(node) if node.layout == torch.strided else node
        if isinstance(node, dict) and depth < 64:
            return type(node)((k, walk(v, depth + 1)) for k, v in node.items()) \
                if type(node) in (dict, collections.OrderedDict) else node
        if isinstance(node, (list, tuple)) and depth < 64 and type(node) in (list, tuple):
            return type(node)(walk(v, depth + 1) for v in node)
        return node

    digest = sidecar["source"].get("sha256", "")
    return Source(walk(tree), "converted-folder", [], lambda: digest, [folder])


def unit_weight_files(folder: Path) -> list[Path]:
    """The model weight file(s) of a Trainer/Accelerate checkpoint or HF model folder."""
    from ..sources.hf import INDEX, hf_checkpoint_files

    if (folder / INDEX).is_file() or (folder / "pytorch_model.bin").is_file():
        return hf_checkpoint_files(folder)
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))
    if found:
        raise ConvertError(f"{folder} already holds safetensors weights ({', '.join(found[:3])}); "
                           "nothing to export")
    raise ConvertError(f"{folder} is not a checkpoint: no pytorch_model.bin (or its index), nor .metadata of a "
                       "torch.distributed.checkpoint folder")
