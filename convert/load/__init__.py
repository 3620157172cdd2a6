"""Loading side: checkpoint.json + safetensors → the checkpoint tree. No pickle anywhere here.

The folder is untrusted: the sidecar is size-capped, strictly parsed and schema-validated; file
names must be plain names inside the folder (no `..`, no symlink out); every storage entry must
have the size the sidecar declares and every view must stay inside its storage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConvertError, MalformedCheckpoint
from ..jsonio import strict_json
from ..read.torch_types import DTYPES_BY_NAME
from ..schema import MAX_SIDECAR_BYTES, SIDECAR_NAME, validate
from ..torch_values import torch_dtype
from ..views import view_end
from .decode import Decoder
from .materialize import jobs_for, read_to_host
from .safetensors_reader import SafetensorsFile

MapLocation = str | torch.device | None


def read_sidecar(folder: Path) -> dict:
    """The folder's checkpoint.json, parsed strictly and validated against the schema."""
    path = folder / SIDECAR_NAME
    if not folder.is_dir():
        raise ConvertError(f"{folder}: no such folder")
    if not path.is_file():
        raise MalformedCheckpoint(f"{folder}: no {SIDECAR_NAME}; not a converted checkpoint folder")
    _inside(folder, path)
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise MalformedCheckpoint(f"{path}: larger than {MAX_SIDECAR_BYTES} bytes; refusing")
    sidecar = strict_json(path.read_bytes(), SIDECAR_NAME)
    validate(sidecar, SIDECAR_NAME)
    return sidecar


def _inside(folder: Path, path: Path) -> Path:
    real_folder, real = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise MalformedCheckpoint(f"{path.name} resolves outside the checkpoint folder; refusing")
    return Path(real)


def _device(map_location: MapLocation) -> torch.device:
    if map_location is None:
        return torch.device("cpu")
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise ConvertError(f"map_location {map_location!r} is not a device "
                           "(use 'cpu', 'cuda', 'cuda:0' or a torch.device)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvertError(f"map_location {map_location!r}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConvertError(f"map_location {map_location!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


class _Loader:
    def __init__(self, folder: Path, sidecar: dict, device: torch.device) -> None:
        self.folder, self.sidecar, self.device = folder, sidecar, device
        self.files: dict[str, SafetensorsFile] = {}
        self.storages: dict[str, torch.UntypedStorage] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.lazy = True
        self.alignments: dict[str, int] | None = None  # storage id → alignment its tensors need
        self.preloaded: dict[tuple[int, str], torch.Tensor] = {}  # (id(file), key) → bytes read by preload()

    def preload(self) -> None:
        """Read every storage's entry now (full materialisation): fresh host memory, or the CUDA stager."""
        self.lazy = False
        jobs = jobs_for((self.file(info["file"]), info["key"]) for info in self.sidecar["storages"].values())
        if self.device.type == "cuda" and torch.cuda.is_available():
            from .cuda import load_to_cuda

            self.preloaded = load_to_cuda(jobs, self.device)
        else:
            self.preloaded = read_to_host(jobs)

    def _raw(self, name: str, key: str) -> torch.Tensor:
        file = self.file(name)
        found = self.preloaded.get((id(file), key))
        return found if found is not None else file.raw(key)

    def file(self, name: str) -> SafetensorsFile:
        if name not in self.files:
            if name not in self.sidecar["files"]:
                raise MalformedCheckpoint(f"{SIDECAR_NAME} refers to {name}, which it does not list")
            path = self.folder / name
            if not path.is_file():
                raise MalformedCheckpoint(f"{self.folder}: {name} is missing")
            self.files[name] = SafetensorsFile(_inside(self.folder, path))
        return self.files[name]

    def _alignment(self, sid: str) -> int:
        """The alignment the tensors on storage `sid` need: their element size (complex128: 16)."""
        if self.alignments is None:
            self.alignments = {}
            for info in self.sidecar["tensors"].values():
                dtype = DTYPES_BY_NAME.get(info["dtype"])
                if dtype is not None:  # unknown names are reported when the tensor is built
                    self.alignments[info["storage"]] = max(self.alignments.get(info["storage"], 1), dtype.itemsize)
        return self.alignments.get(sid, 1)

    def storage(self, sid: str) -> torch.UntypedStorage:
        if sid not in self.storages:
            info = self.sidecar["storages"].get(sid)
            if info is None:
                raise MalformedCheckpoint(f"{SIDECAR_NAME} refers to storage {sid}, which it does not define")
            raw = self._raw(info["file"], info["key"])
            if raw.numel() != info["nbytes"]:
                raise MalformedCheckpoint(f"storage {sid} should be {info['nbytes']} bytes; "
                                          f"{info['file']}:{info['key']} holds {raw.numel()}")
            if raw.numel() and raw.data_ptr() % self._alignment(sid):
                raw = raw.clone()  # misaligned (an older or hand-made folder): complex128 code faults on it
            if self.device.type != "cpu":
                raw = raw.to(self.device)
            self.storages[sid] = raw.untyped_storage()
        return self.storages[sid]

    def tensor(self, tid: str) -> torch.Tensor:
        if tid not in self.tensors:
            info = self.sidecar["tensors"].get(tid)
            if info is None:
                raise MalformedCheckpoint(f"{SIDECAR_NAME} refers to tensor {tid}, which it does not define")
            self.tensors[tid] = self._build_tensor(tid, info)
        return self.tensors[tid]

    def _build_tensor(self, tid: str, info: dict) -> torch.Tensor:
        dtype = torch_dtype(info["dtype"])
        storage = self.storage(info["storage"])
        try:
            end = view_end(info["offset"], info["shape"], info["stride"], dtype.itemsize)
        except ValueError as exc:
            raise MalformedCheckpoint(f"tensor {tid}: {exc}") from None
        if end > storage.nbytes():
            raise MalformedCheckpoint(f"tensor {tid} reaches byte {end} of a {storage.nbytes()}-byte storage")
        try:
            t = torch.empty(0, dtype=dtype, device=self.device).set_(storage, info["offset"], info["shape"], info["stride"])
            if info.get("conj") or info.get("neg"):
                # only the bits that are set: torch treats a present key as "set", whatever its value
                torch._C._set_tensor_metadata(t, {k: True for k in ("conj", "neg") if info.get(k)})
            if info["parameter"]:
                t = torch.nn.Parameter(t, requires_grad=info["requires_grad"])
            elif info["requires_grad"]:
                t.requires_grad_(True)
        except RuntimeError as exc:
            raise MalformedCheckpoint(f"tensor {tid} cannot be rebuilt: {str(exc).splitlines()[0]}") from None
        for name, value in info.get("attrs", {}).items():
            t.__dict__[name] = self.decoder.value(value)
        return t

    def array(self, aid: str) -> np.ndarray:
        if aid not in self.arrays:
            info = self.sidecar["arrays"].get(aid)
            if info is None:
                raise MalformedCheckpoint(f"{SIDECAR_NAME} refers to array {aid}, which it does not define")
            array = self._build_array(aid, info)
            self.arrays[aid] = array if self.lazy else array.copy(order="K")  # full: nothing left mapped
        return self.arrays[aid]

    def _build_array(self, aid: str, info: dict) -> np.ndarray:
        dtype = np.dtype(info["dtype"])
        raw = self.file(info["file"]).raw(info["key"])
        shape = tuple(info["shape"])
        numel = int(np.prod(shape, dtype=object)) if shape else 1
        if raw.numel() != numel * dtype.itemsize:
            raise MalformedCheckpoint(f"array {aid} of shape {list(shape)} needs {numel * dtype.itemsize} bytes; "
                                      f"{info['file']}:{info['key']} holds {raw.numel()}")
        if not self.lazy:  # mmap=False: arrays too live in ordinary memory, not in the mapped file
            raw = raw.clone()
        array = raw.numpy().view(dtype.newbyteorder("<")).reshape(shape)
        if dtype.byteorder == ">":
            array = array.astype(dtype)
        return np.asfortranarray(array) if info["fortran"] else array


def load_checkpoint(folder: str | os.PathLike, map_location: MapLocation = None, *, mmap: bool = True) -> Any:
    """Load a folder written by `convert_checkpoint`, equivalent to `torch.load` of the original.

    Reads only `checkpoint.json` and the safetensors files: no pickle is involved. Tensors are
    placed on `map_location` ("cpu" by default; "cuda", "cuda:0" or a torch.device). Tied and
    aliased tensors share storage again; nn.Modules come back as their state_dict.

    On the CPU, `mmap=True` (the default) is lazy: the files are mapped copy-on-write and only the
    headers are read; tensors page in on first touch and may be modified without touching the files.
    `mmap=False` materialises everything now into ordinary memory (like torch.load), reading with
    several threads straight into each storage. On CUDA every storage is read through a reusable
    pinned staging buffer with reads overlapped with host-to-device copies; `mmap` is ignored there.

    Example:
        >>> ck = load_checkpoint("new/checkpoint")            # doctest: +SKIP
        >>> model.load_state_dict(ck["model_state_dict"])     # doctest: +SKIP
    """
    folder = Path(folder)
    device = _device(map_location)
    sidecar = read_sidecar(folder)
    loader = _Loader(folder, sidecar, device)
    loader.decoder = Decoder(loader.tensor, loader.array)
    if not mmap or device.type != "cpu":
        loader.preload()
    try:
        return loader.decoder.value(sidecar["root"])
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise MalformedCheckpoint(f"{folder}: {SIDECAR_NAME} is inconsistent ({type(exc).__name__}: {exc})") from None
