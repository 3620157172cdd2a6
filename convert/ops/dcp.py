"""Convert, verify and read torch.distributed.checkpoint (DCP) folders: the folder-level operations.

The tree comes from `read/dcp.py` (the same nested state dict `dcp_to_torch_save` + `torch.load`
give) and goes through the usual plan → writer path, so a model state dict becomes a plain
safetensors file and `--max-shard-size` shards it. Provenance: the sidecar's `source` names the
folder, with `.metadata`'s sha256 and every input file (size, sha256) under `parts`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ..errors import OutputExists
from ..primitives.hashing import PENDING_SHA256, sha256_fd
from ..sources.dcp_folder import SOURCE_FORMAT, DcpFolder, is_dcp_folder
from ..sources.dcp_metadata import METADATA_NAME
from ..write.plan import Plan, make_plan
from ..write.safetensors_io import KernelCopySource
from .pipeline import provenance, write_checkpoint_folder

__all__ = ["convert_dcp_folder", "is_dcp_folder", "plan_dcp_folder", "read_dcp_folder", "verify_dcp_folder"]


def _hash_file(path: Path, stop: threading.Event | None = None) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        return {"name": path.name, "size": size, "sha256": sha256_fd(fd, size, stop)}
    finally:
        os.close(fd)


class _BackgroundHashes:
    """sha256 of each input file, one after the other on a thread, while the conversion writes."""

    def __init__(self, paths: list[Path]) -> None:
        self._stop = threading.Event()
        self._result: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(paths,), name="ckpt-convert-dcp-sha256", daemon=True)
        self._thread.start()

    def _run(self, paths: list[Path]) -> None:
        try:
            self._result = [_hash_file(p, self._stop) for p in paths]
        except BaseException as exc:  # handed to the caller in parts()
            self._error = exc

    def parts(self) -> list[dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def __enter__(self) -> _BackgroundHashes:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _input_files(dcp: DcpFolder) -> list[Path]:
    return [dcp.folder / METADATA_NAME, *(dcp.folder / name for name in dcp.part_names())]


def _provenance(dcp: DcpFolder, parts: list[dict[str, Any]] | None) -> dict[str, Any]:
    return provenance({**_source_parts(parts), "name": dcp.folder.resolve().name, "format": SOURCE_FORMAT,
                       "pickle_protocol": dcp.metadata.protocol})


def _source_parts(parts: list[dict[str, Any]] | None) -> dict[str, Any]:
    """`source` fields known once every input file is hashed: total size, .metadata's sha256, the parts."""
    return {"size": sum(p["size"] for p in parts) if parts else 0,
            "sha256": parts[0]["sha256"] if parts else PENDING_SHA256, "parts": parts or []}


def plan_dcp_folder(src: str | os.PathLike, max_shard_size: int | None = None) -> Plan:
    """The conversion plan (sidecar and entries) of a DCP folder, without writing anything."""
    with DcpFolder(src) as dcp:
        return make_plan(dcp.root, _provenance(dcp, None), max_shard_size=max_shard_size)


def convert_dcp_folder(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                       max_shard_size: int | str | None = None) -> dict:
    """Convert a DCP folder to a ckpt-convert folder; returns the sidecar written.

    Args:
        src: the folder `torch.distributed.checkpoint.save` wrote (`.metadata` + `*.distcp`).
        dst: the output folder (created atomically).
        overwrite: replace `dst` if it exists.
        max_shard_size: split state dicts larger than this ("5GB", "500MiB" or bytes) into indexed shards.
    Returns:
        The sidecar (`checkpoint.json`) as a dict.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise OutputExists(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    with DcpFolder(src) as dcp, _BackgroundHashes(_input_files(dcp)) as hashes:
        # chunks stored as they are: file-to-file in the kernel from each rank file
        sources = [KernelCopySource(part.buf, part.fileno()) for part in dcp.parts.values() if part.size]

        def complete_source() -> dict[str, Any]:
            dcp.check_unchanged()  # every byte written came from the files as they were opened
            return _source_parts(hashes.parts())

        return write_checkpoint_folder(dcp.root, dst, provenance=_provenance(dcp, None), overwrite=overwrite,
                                       max_shard_size=max_shard_size, kernel_copy_source=sources,
                                       complete_source=complete_source, sources=[src])


def read_dcp_folder(src: str | os.PathLike) -> Any:
    """The state dict `dcp_to_torch_save` + `torch.load` would give, read without unpickling anything."""
    from ..read.materialize import materialize  # torch: here, so convert/scan of a DCP folder need none

    with DcpFolder(src) as dcp:
        return materialize(dcp.root)


def verify_dcp_folder(src: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """Differences between the DCP folder `src` (read safely) and the converted `folder`; empty means equivalent."""
    from ..load import load_checkpoint, read_sidecar
    from ..read.materialize import materialize
    from .compare import compare_trees  # torch: here, so convert/scan of a DCP folder need none

    sidecar = read_sidecar(Path(folder))
    diffs = []
    with DcpFolder(src) as dcp:
        parts = [_hash_file(p) for p in _input_files(dcp)]
        original = materialize(dcp.root)
    recorded = sidecar["source"].get("parts")
    if sidecar["source"]["format"] != SOURCE_FORMAT or recorded != parts:
        changed = sorted({p["name"] for p in parts} ^ {p.get("name") for p in recorded or []}
                         | {p["name"] for p in parts if p not in (recorded or [])})
        diffs.append(f"<source>: {folder} was converted from different files ({', '.join(changed)[:200]} differ)")
    return diffs + compare_trees(original, load_checkpoint(folder, map_location="cpu"))
