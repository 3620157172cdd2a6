"""Loading side: checkpoint.json + safetensors → the checkpoint tree. No pickle anywhere here.

The folder is untrusted: the sidecar is size-capped, strictly parsed and schema-validated; file
names must be plain names inside the folder (no `..`, no symlink out); every storage entry must
have the size the sidecar declares and every view must stay inside its storage.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConvertError, CorruptFolder, MalformedCheckpoint
from ..model.torch_types import DTYPES_BY_NAME
from ..model.torch_values import tensor_dtype
from ..model.views import view_end
from ..sidecar.integrity import check_digest, check_header, has_record
from ..sidecar.safetensors_file import open_data_file as _open_data_file
from ..sidecar.schema import SIDECAR_NAME, read_sidecar
from ..sign import TrustPolicy, check_trust
from .decode import Decoder
from .materialize import jobs_for, read_to_host
from .placement import MapLocation, Placement
from .rebuild import Piece, entry_index, plain_array, plain_tensor, rebuild_storage
from .safetensors_reader import SafetensorsFile

__all__ = ["MapLocation", "load_checkpoint", "open_data_file", "read_sidecar"]


def open_data_file(folder: Path, name: str) -> SafetensorsFile:
    """The data file `name` of `folder`, header-checked, its entries readable as tensors."""
    return _open_data_file(folder, name, SafetensorsFile)


class _Loader:
    def __init__(self, folder: Path, sidecar: dict, placement: Placement) -> None:
        self.folder, self.sidecar, self.placement = folder, sidecar, placement
        self.default_location = sidecar.get("default_device", "cpu")  # where plain tensors' storages were saved

        self.files: dict[str, SafetensorsFile] = {}
        self.storages: dict[str, torch.UntypedStorage] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.lazy = True
        self.alignments: dict[str, int] | None = None  # storage id → alignment its tensors need
        self.preloaded: dict[tuple[int, str], torch.Tensor] = {}  # (id(file), key) → bytes read by preload()
        self.entries = entry_index(sidecar.get("entries", {}))  # plain tensor/array id → (file, key)
        locations = [info.get("device", self.default_location) for info in sidecar["storages"].values()]
        if any(id_.startswith("t") for id_ in self.entries):
            locations.append(self.default_location)
        self.device = placement.single(locations)  # the one target (None: several, or a callable decides)

    def preload(self) -> None:
        """Read every storage's entry now (full materialisation): fresh host memory, or the CUDA stager."""
        self.lazy = False
        wanted = [(info["file"], info["key"]) for info in self.sidecar["storages"].values() if "file" in info]
        wanted += [where for id_, where in self.entries.items() if id_.startswith("t")]
        jobs = jobs_for((self.file(name), key) for name, key in wanted)
        if self.device is not None and self.device.type == "cuda" and torch.cuda.is_available():
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
            file = open_data_file(self.folder, name)
            problem = check_header(self.sidecar, name, file.metadata, file.data_bytes)
            if problem is not None:  # e.g. checkpoint.json of one conversion with data files of another
                raise CorruptFolder(f"{self.folder}: {problem}")
            self.files[name] = file
        return self.files[name]

    def verify(self) -> None:
        """Check every data file's sha256 against the sidecar: of the very file the tensors will map (its
        identity is checked), read with pread (a file cut short meanwhile is an error, never SIGBUS)."""
        if not has_record(self.sidecar):
            raise ConvertError(f"{self.folder} was written without digests (by an older ckpt-convert); "
                               "load it without verify=True, or check it against its source with verify_checkpoint")
        for name in self.sidecar["files"]:
            problem = check_digest(self.sidecar, name, self.file(name).sha256())
            if problem is not None:
                raise CorruptFolder(f"{self.folder}: {problem}")

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
            if "pieces" in info:
                raw = self._rebuilt(sid, info)
            else:
                raw = self._raw(info["file"], info["key"])
                if raw.numel() != info["nbytes"]:
                    raise MalformedCheckpoint(f"storage {sid} should be {info['nbytes']} bytes; "
                                              f"{info['file']}:{info['key']} holds {raw.numel()}")
            if raw.numel() and raw.data_ptr() % self._alignment(sid):
                raw = raw.clone()  # misaligned (an older or hand-made folder): complex128 code faults on it
            self.storages[sid] = self.placement.place(raw, info.get("device", self.default_location))
        return self.storages[sid]

    def _rebuilt(self, sid: str, info: dict) -> torch.Tensor:
        """A storage written as pieces (its tensors' contiguous copies) and the rest (raw bytes), as uint8."""
        pieces = []
        for tid in info["pieces"]:
            row = self.sidecar["tensors"].get(tid)
            if row is None or row.get("storage") != sid or "file" not in row:
                raise MalformedCheckpoint(f"storage {sid}: piece {tid} is not a stored tensor of this storage")
            pieces.append(Piece(tid, row, row["file"], row["key"], self.file(row["file"])))
        rest = Piece("rest", {}, info["rest"][0], info["rest"][1], self.file(info["rest"][0])) if "rest" in info else None
        try:
            return rebuild_storage(sid, info["nbytes"], pieces, rest, self._raw, mapped=self.lazy)
        except RuntimeError as exc:
            raise MalformedCheckpoint(f"storage {sid} cannot be rebuilt: {str(exc).splitlines()[0]}") from None

    def tensor(self, tid: str) -> Any:
        """The tensor `tid`; the first time a tensor with attributes is met, a generator for the decoder that
        yields the attributes' values and returns the tensor (a chain of them costs no Python frames)."""
        if tid not in self.tensors:
            info = self.sidecar["tensors"].get(tid)
            if info is not None:
                t = self.tensors[tid] = self._build_tensor(tid, info)  # before its attributes: they may hold it
                if info.get("attrs"):
                    return self._attrs(t, info["attrs"])
            elif tid in self.entries:
                self.tensors[tid] = self._plain_tensor(tid)
            else:
                raise MalformedCheckpoint(f"{SIDECAR_NAME} refers to tensor {tid}, which it does not define")
        return self.tensors[tid]

    def _plain_tensor(self, tid: str) -> torch.Tensor:
        """A tensor with no row: exactly its safetensors entry (the header has been checked)."""
        name, key = self.entries[tid]
        file = self.file(name)
        if key not in file.entries:
            raise MalformedCheckpoint(f"{name} has no entry {key!r:.80} (tensor {tid})")
        t = plain_tensor(self._raw(name, key), file.entries[key])
        if self.placement.keeps(self.default_location, t.device):
            return t  # stays where it is (the common case: the CPU, or already preloaded to its device)
        storage = self.placement.place(torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()),
                                       self.default_location)
        if storage.device == t.device and storage.data_ptr() == t.untyped_storage().data_ptr():
            return t  # a map_location that kept it where it is
        return torch.empty(0, dtype=t.dtype, device=storage.device).set_(storage, 0, t.shape, t.stride())

    def _build_tensor(self, tid: str, info: dict) -> torch.Tensor:
        dtype = tensor_dtype(info["dtype"], f"tensor {tid}")
        storage = self.storage(info["storage"])
        try:
            end = view_end(info["offset"], info["shape"], info["stride"], dtype.itemsize)
        except ValueError as exc:
            raise MalformedCheckpoint(f"tensor {tid}: {exc}") from None
        if end > storage.nbytes():
            raise MalformedCheckpoint(f"tensor {tid} reaches byte {end} of a {storage.nbytes()}-byte storage")
        try:
            t = torch.empty(0, dtype=dtype, device=storage.device).set_(storage, info["offset"], info["shape"], info["stride"])
            if info.get("conj") or info.get("neg"):
                # only the bits that are set: torch treats a present key as "set", whatever its value
                torch._C._set_tensor_metadata(t, {k: True for k in ("conj", "neg") if info.get(k)})
            if info["parameter"]:
                t = torch.nn.Parameter(t, requires_grad=info["requires_grad"])
            elif info["requires_grad"]:
                t.requires_grad_(True)
        except RuntimeError as exc:
            raise MalformedCheckpoint(f"tensor {tid} cannot be rebuilt: {str(exc).splitlines()[0]}") from None
        return t

    @staticmethod
    def _attrs(t: torch.Tensor, attrs: dict) -> Generator[tuple[Any, int], Any, torch.Tensor]:
        for name, value in attrs.items():
            t.__dict__[name] = yield value, 1
        return t

    def array(self, aid: str) -> np.ndarray:
        if aid not in self.arrays:
            info = self.sidecar["arrays"].get(aid)
            if info is not None:
                array = self._build_array(aid, info)
            elif aid in self.entries:
                name, key = self.entries[aid]
                file = self.file(name)
                if key not in file.entries:
                    raise MalformedCheckpoint(f"{name} has no entry {key!r:.80} (array {aid})")
                array = plain_array(file.raw(key), file.entries[key], f"array {aid}")
            else:
                raise MalformedCheckpoint(f"{SIDECAR_NAME} refers to array {aid}, which it does not define")
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


def load_checkpoint(folder: str | os.PathLike, map_location: MapLocation = None, *, mmap: bool = True,
                    verify: bool = False, trust: TrustPolicy | None = None) -> Any:
    """Load a folder written by `convert_checkpoint`, equivalent to `torch.load` of the original.

    Reads only `checkpoint.json` and the safetensors files: no pickle is involved. Tensors are
    placed as torch.load places them: `map_location=None` restores each storage to the device it was
    saved on (DeviceUnavailable, a RuntimeError, if this machine lacks it); a device ("cpu", "cuda:0",
    a torch.device) takes everything there; a dict ({"cuda:0": "cpu"}) remaps saved locations; a
    callable(storage, location) returns each storage where it should go (or None). Tied and
    aliased tensors share storage again; nn.Modules come back as their state_dict.

    On the CPU, `mmap=True` (the default) is lazy: the files are mapped copy-on-write and only the
    headers are read; tensors page in on first touch and may be modified without touching the files.
    `mmap=False` materialises everything now into ordinary memory (like torch.load), reading with
    several threads straight into each storage. On CUDA every storage is read through a reusable
    pinned staging buffer with reads overlapped with host-to-device copies; `mmap` is ignored there.

    Every load checks that each data file carries the sidecar's folder id and the recorded data
    size (a checkpoint.json from another conversion is refused, with CorruptFolder). `verify=True`
    also checks that checkpoint.json is exactly as written (its seal) and the sha256 of every data
    file first (reads every byte once; ConvertError for a folder written without digests).
    `trust=TrustPolicy(...)` (convert.sign) first checks the
    folder's signature: UnsignedFolder or SignatureInvalid before any tensor is built.

    Example:
        >>> ck = load_checkpoint("new/checkpoint")            # doctest: +SKIP
        >>> model.load_state_dict(ck["model_state_dict"])     # doctest: +SKIP
    """
    with _gc_paused():  # see _gc_paused
        return _load(Path(folder), map_location, mmap, verify, trust)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a folder is loaded: it makes no cycles worth collecting, and with
    torch imported every full collection the parsing triggers walks torch's ~10^5 objects (measured: load of
    GPT-2 small's folder, headers only, 0.25 s with the collector, 0.08 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(folder: Path, map_location: MapLocation, mmap: bool, verify: bool, trust: TrustPolicy | None) -> Any:
    check_trust(folder, trust)  # before anything of the folder is parsed
    placement = Placement(map_location)  # a bad map_location is said before anything is read
    sidecar = read_sidecar(folder, check_seal=verify)  # verify: an edited checkpoint.json is CorruptFolder
    loader = _Loader(folder, sidecar, placement)
    loader.decoder = Decoder(loader.tensor, loader.array)
    if verify:
        loader.verify()
    if not mmap or loader.device is None or loader.device.type != "cpu":
        loader.preload()
    try:
        return loader.decoder.value(sidecar["root"])
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise MalformedCheckpoint(f"{folder}: {SIDECAR_NAME} is inconsistent ({type(exc).__name__}: {exc})") from None
