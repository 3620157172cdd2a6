"""Peak memory converting DCP folders, against the largest chunk: `python -m benchmarks.dcp`.

For each tensor size and chunk count, a DCP folder holds one float32 tensor split into equal chunks
along dim 0 (rows: each chunk's bytes are contiguous) or along dim 1 (columns: every row of the
output takes a run from each chunk), one chunk per rank file, written the way FileSystemWriter
writes them. Each folder is converted in a fresh process by ckpt-convert and, as the baseline, by
PyTorch's `dcp_to_torch_save`; the table reports the memory each held beyond its imports
(peak RSS - RSS after imports) as a ratio to the largest chunk. Results: --out/dcp.json and dcp.md.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import platform
import shutil
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20


def build(folder: Path, mib: int, chunks: int, dim: int) -> int:
    """A DCP folder with one [rows, cols] float32 tensor of `mib` MiB in `chunks` chunks along `dim`;
    returns the largest chunk's bytes."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    cols = 1024
    rows = mib * MIB // (4 * cols)
    whole = torch.empty(rows, cols).uniform_()
    folder.mkdir(parents=True)
    storage, metas = {}, []
    bounds = [round(i * whole.shape[dim] / chunks) for i in range(chunks + 1)]
    largest = 0
    for rank in range(chunks):
        part = whole.narrow(dim, bounds[rank], bounds[rank + 1] - bounds[rank]).clone()
        buf = io.BytesIO()
        torch.save(part, buf)
        name = f"__{rank}_0.distcp"
        (folder / name).write_bytes(buf.getvalue())
        offsets = [0, 0]
        offsets[dim] = bounds[rank]
        storage[MetadataIndex("model.weight", torch.Size(offsets))] = _StorageInfo(name, 0, len(buf.getvalue()))
        metas.append(ChunkStorageMetadata(torch.Size(offsets), part.size()))
        largest = max(largest, part.numel() * 4)
    md = Metadata({"model.weight": TensorStorageMetadata(TensorProperties.create_from_tensor(whole), whole.size(), metas)},
                  {"model.weight": ("model", "weight")}, storage)
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    return largest


def measure(method: str, src: Path, dst: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.dcp.measure", method, str(src), str(dst)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 384], help="tensor sizes in MiB")
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ckpt-convert-dcp-bench"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    rows = []
    for mib in args.sizes:
        for chunks in args.chunks:
            for dim in (0, 1):
                case = args.work / f"t{mib}-c{chunks}-d{dim}"
                largest = build(case / "src", mib, chunks, dim)
                row = {"tensor_mib": mib, "chunks": chunks, "split_dim": dim, "largest_chunk_mib": largest / MIB}
                for method in ("ours", "torch"):
                    result = measure(method, case / "src", case / f"out-{method}")
                    held = (result["peak_rss"] - result["rss_after_imports"]) / MIB
                    row[method] = {"seconds": round(result["seconds"], 3), "held_mib": round(held, 1),
                                   "held_over_largest_chunk": round(held * MIB / largest, 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(case)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    (args.out / "dcp.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    lines = [f"Machine: {machine}. One fresh process per conversion; held = peak RSS - RSS after imports.", "",
             "| tensor MiB | chunks | split | largest chunk MiB | ckpt-convert held MiB | × largest chunk | s "
             "| dcp_to_torch_save held MiB | × largest chunk | s |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, t = r["ours"], r["torch"]
        lines.append(f"| {r['tensor_mib']} | {r['chunks']} | {'rows (dim 0)' if r['split_dim'] == 0 else 'cols (dim 1)'} "
                     f"| {r['largest_chunk_mib']:.0f} | {o['held_mib']:.0f} | {o['held_over_largest_chunk']:.2f} "
                     f"| {o['seconds']:.2f} | {t['held_mib']:.0f} | {t['held_over_largest_chunk']:.2f} | {t['seconds']:.2f} |")
    (args.out / "dcp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
