"""Building real torch.distributed.checkpoint (DCP) folders for the tests.

- `save_single`: `dcp.save` in one process (model, optimizer state, non-tensor values).
- `save_two_ranks`: `dcp.save` from two gloo processes on CPU with DTensor parameters sharded
  Shard(0)/Shard(1) over a 2-rank mesh, so tensors really are split in chunks across `.distcp` files.
- `write_chunked`: a folder written the way FileSystemWriter writes it (each item a `torch.save` archive
  in a `.distcp` file, `.metadata` a pickle of torch's own metadata classes), with the chunk layout
  chosen by the test: any box tiling, or a hostile one. `dcp_to_torch_save` reads the valid ones.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def reference(folder: Path, tmp: Path):
    """What PyTorch itself gives for the folder: dcp_to_torch_save + torch.load."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{folder.name}.reference.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(folder, out)
    return torch.load(out, weights_only=False)


def single_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    model.register_buffer("counts", torch.arange(4, dtype=torch.int32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "step": 11,
            "extra": {"name": "run-1", "lrs": [0.1, 0.2], "pair": (1, "a"), "half": torch.ones(3, dtype=torch.float16)}}


def save_single(folder: Path, state: dict | None = None) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(single_state() if state is None else state, checkpoint_id=folder)
    return folder


_RANK_SCRIPT = r"""
import os, sys, warnings
warnings.simplefilter("ignore")
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (int(os.environ["WORLD_SIZE"]),))
g = torch.Generator().manual_seed(0)
layout = {
    "embed": (torch.randn(10, 6, generator=g), Shard(0)),
    "proj": (torch.randn(5, 8, generator=g).to(torch.bfloat16), Shard(1)),
    "odd_rows": (torch.randn(3, 4, generator=g), Shard(0)),
    "bias": (torch.arange(7, dtype=torch.int64), Replicate()),
    "scale": (torch.tensor(2.5, dtype=torch.float64), Replicate()),
}
model = {k: distribute_tensor(t, mesh, [p]) for k, (t, p) in layout.items()}
optim = {"state": {"embed": {"exp_avg": distribute_tensor(torch.randn(10, 6, generator=g), mesh, [Shard(1)])}},
         "param_groups": [{"lr": 0.01, "params": ["embed", "proj"]}]}
dcp.save({"model": model, "optim": optim, "epoch": 4}, checkpoint_id=sys.argv[1])
dist.barrier()  # both ranks are done writing
# skip gloo's C++ teardown: under load its destructor sometimes aborts ("terminate called without an
# active exception") after everything was written, failing the run for nothing
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_two_ranks(folder: Path, timeout: float = 240) -> Path:
    """`dcp.save` from two gloo processes (RANK 0 and 1) with sharded DTensors."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(folder)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            errors.append(err[-2000:])
    assert not errors, errors
    return folder


# ------------------------------------------------------------------------------ hand-written folders

def write_chunked(folder: Path, tensors: dict, values: dict | None = None, *, ranks: int = 2,
                  patch_storage=None, patch_metadata_bytes=None) -> Path:
    """Write a DCP folder with FileSystemWriter's layout and torch's metadata classes.

    Args:
        tensors: fqn → (whole tensor, [(offsets, sizes), ...]); chunk i goes to rank i % ranks, saved
            as `torch.save(whole[box].clone())` the way DCP saves a shard.
        values: fqn → a non-tensor value (a bytes item, `torch.save(value)`).
        patch_storage: optional fn(fqn, offsets, StorageInfo) → StorageInfo, to corrupt a record.
        patch_metadata_bytes: optional fn(bytes) → bytes applied to the pickled `.metadata`.
    """
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    folder.mkdir(parents=True)
    streams = [io.BytesIO() for _ in range(ranks)]
    items, storage = {}, {}

    def put(rank: int, fqn: str, offsets, data: bytes) -> None:
        stream = streams[rank]
        info = _StorageInfo(f"__{rank}_0.distcp", stream.tell(), len(data))
        stream.write(data)
        if patch_storage is not None:
            info = patch_storage(fqn, offsets, info)
        storage[MetadataIndex(fqn, None if offsets is None else torch.Size(offsets))] = info

    for i, (fqn, (whole, boxes)) in enumerate(tensors.items()):
        chunks = []
        for j, (offsets, sizes) in enumerate(boxes):
            index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
            buf = io.BytesIO()
            torch.save(whole[index].clone(), buf)
            put((i + j) % ranks, fqn, offsets, buf.getvalue())
            chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
        items[fqn] = TensorStorageMetadata(TensorProperties.create_from_tensor(whole), whole.size(), chunks)
    for fqn, value in (values or {}).items():
        buf = io.BytesIO()
        torch.save(value, buf)
        put(0, fqn, None, buf.getvalue())
        items[fqn] = BytesStorageMetadata()
    planner_data = {fqn: tuple(fqn.split(".")) for fqn in items}
    metadata = Metadata(items, planner_data, storage)
    for rank, stream in enumerate(streams):
        (folder / f"__{rank}_0.distcp").write_bytes(stream.getvalue())
    raw = pickle.dumps(metadata)
    (folder / ".metadata").write_bytes(patch_metadata_bytes(raw) if patch_metadata_bytes else raw)
    return folder
