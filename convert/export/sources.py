"""Open an export's SRC: a checkpoint file, a DCP folder, or a Trainer/Accelerate/HF folder's model weights.

Each yields the checkpoint tree (tensors are byte ranges of the input, nothing executed), the input
files the writer may copy from in the kernel, and a function giving the source's sha256 once the
data has been copied (for a file it is computed on a thread meanwhile).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvertError, MalformedCheckpoint
from ..model.records import StorageRef, TensorRef
from ..model.torch_types import CANONICAL
from ..primitives.hashing import BackgroundSha256, sha256_fd
from ..read import Input, read_tree
from ..sidecar.schema import SIDECAR_NAME
from ..sources.dcp_folder import DcpFolder, is_dcp_folder
from ..sources.dcp_metadata import METADATA_NAME
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


def _file_digest(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return sha256_fd(fd, os.fstat(fd).st_size, path=path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_source(src: Path) -> Iterator[Source]:
    if is_dcp_folder(src):
        with DcpFolder(src) as dcp:
            yield Source(dcp.root, "torch-dcp", [KernelCopySource(p.buf, p.fileno()) for p in dcp.parts.values() if p.size],
                         lambda: _file_digest(src / METADATA_NAME), [src / METADATA_NAME])
        return
    if src.is_dir() and (src / SIDECAR_NAME).is_file():
        yield _converted_folder(src)
        return
    if src.is_dir():
        files = unit_weight_files(src)
        with contextlib.ExitStack() as stack:
            merged: collections.OrderedDict = collections.OrderedDict()
            inputs = []
            for path in files:
                inp = stack.enter_context(Input(path, converting=True))
                root = read_tree(inp).root
                root = getattr(root, "state_dict", root)
                if not isinstance(root, dict):
                    raise ConvertError(f"{path}: expected a state dict, found {type(root).__name__}")
                for key, value in root.items():
                    if key in merged:
                        raise MalformedCheckpoint(f"{path.name}: key {key!r} appears in two shards")
                    merged[key] = value
                inputs.append(inp)

            def digest() -> str:
                if len(files) == 1:
                    return _file_digest(files[0])
                h = hashlib.sha256()  # several shards: one digest over their names and digests
                for path in files:
                    h.update(f"{path.name}\0{_file_digest(path)}\n".encode())
                return h.hexdigest()

            yield Source(merged if len(files) > 1 else root if len(files) == 1 else merged, "hf-folder",
                         [KernelCopySource(i.buf, i.fileno()) for i in inputs], digest, files)
            for inp in inputs:
                inp.check_unchanged()
        return
    with Input(src, converting=True) as inp, BackgroundSha256(inp.fileno(), inp.size, inp.path) as hasher:
        result = read_tree(inp)

        def digest() -> str:
            value = hasher.hexdigest()
            inp.check_unchanged()
            return value

        yield Source(result.root, "file", [KernelCopySource(inp.buf, inp.fileno())], digest, [src])


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
