"""Conversion and load benchmarks: `python -m benchmarks.perf [--max-size 2GB] [--reps 3]`.

For every checkpoint up to --max-size (generated once under --work): conversion (cp, the naive
torch.load + save_file path, ckpt-convert) and loading (torch.load, torch.load mmap=True,
safetensors load_file, ckpt-convert lazy and full; the CUDA variants when a GPU is present), each
run in a fresh process, --reps times, interleaved, warm and cold page cache. Writes
results.json, results.md and PNG plots to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from .checkpoints import CASES

CONVERT = ["cp", "convert_naive", "convert_ours"]
LOAD_CPU = ["load_torch", "load_torch_mmap", "load_safetensors", "load_ours_lazy", "load_ours_full"]
LOAD_CUDA = ["load_torch_cuda", "load_safetensors_cuda", "load_ours_cuda"]
ON_SOURCE = {"load_torch", "load_torch_mmap", "load_torch_cuda"}  # these read the .pt, the rest the folder


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def run(method: str, *args: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.perf.measure", method, *map(str, args)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def drop_cache(paths: list[Path]) -> None:
    """Evict the files from the page cache (clean pages only: flush them first)."""
    for path in paths:
        for f in files_of(path):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm(paths: list[Path]) -> None:
    for path in paths:
        for f in files_of(path):
            with open(f, "rb") as h:
                while h.read(64 << 20):
                    pass


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in files_of(path))


def machine() -> dict:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text().splitlines(), Path("/proc/meminfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal")), 0)
    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "python": platform.python_version(),
            "kernel": platform.release()}
    probe = subprocess.run([sys.executable, "-c", "import torch, safetensors; print(torch.__version__, safetensors.__version__,"
                            " torch.cuda.get_device_name() if torch.cuda.is_available() else '')"],
                           capture_output=True, text=True)
    torch_v, st_v, *gpu = probe.stdout.split(" ", 2)
    info.update(torch=torch_v, safetensors=st_v, gpu=(gpu[0].strip() if gpu else "") or None)
    return info


def record(results: list, case: str, size: int, op: str, method: str, cache: str, runs: list[dict]) -> None:
    secs = [r["seconds"] for r in runs]
    results.append({"case": case, "size_bytes": size, "op": op, "method": method, "cache": cache,
                    "seconds": secs, "median_s": statistics.median(secs),
                    "peak_rss_median": statistics.median(r["peak_rss"] for r in runs),
                    "gb_per_s": size / statistics.median(secs) / 1e9, **{k: v for k, v in runs[-1].items()
                                                                            if k == "output_bytes"}})
    print(f"  {op:8s} {method:22s} {cache:4s} median {statistics.median(secs):7.3f} s  "
          f"peak RSS {statistics.median(r['peak_rss'] for r in runs) / 2**20:7.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-size", default="2GB", help="largest checkpoint to build and measure (default 2GB)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per measurement; the median is reported")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ckpt-convert-bench"), help="where checkpoints go")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold page cache runs")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints and outputs")
    args = ap.parse_args(argv)
    cuda = json.loads(subprocess.run([sys.executable, "-c", "import torch, json; print(json.dumps(torch.cuda.is_available()))"],
                                     capture_output=True, text=True).stdout)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    cases = [c for c in CASES if c.approx_bytes <= parse_size(args.max_size)]
    for case in cases:
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from benchmarks.perf.checkpoints import "
                        f"CASES, generate; generate([c for c in CASES if c.name == {case.name!r}][0], Path({str(args.work)!r}))"],
                       check=True, cwd=Path(__file__).resolve().parents[2])
        src = args.work / f"{case.name}.pt"
        size = src.stat().st_size
        print(f"{case.name}: {size / 1e9:.3f} GB ({case.description})", flush=True)
        outs = {m: args.work / f"{case.name}.{m}" for m in CONVERT}
        runs: dict[str, list] = {m: [] for m in CONVERT}
        for _ in range(args.reps):  # interleaved, so all three see the same machine state
            for m in CONVERT:
                shutil.rmtree(outs[m], ignore_errors=True) if outs[m].is_dir() else outs[m].unlink(missing_ok=True)
                warm([src])
                r = run(m, src, outs[m])
                r["output_bytes"] = size_of(outs[m])
                runs[m].append(r)
        for m in CONVERT:
            record(results, case.name, size, "convert", m, "warm", runs[m])
        folder = outs["convert_ours"]
        methods = LOAD_CPU + (LOAD_CUDA if cuda else [])
        for cache in ["warm"] + ([] if args.no_cold else ["cold"]):
            runs = {m: [] for m in methods}
            for _ in range(args.reps):
                for m in methods:
                    target = src if m in ON_SOURCE else folder
                    (drop_cache if cache == "cold" else warm)([target])
                    runs[m].append(run(m, target))
            for m in methods:
                record(results, case.name, size, "load", m, cache, runs[m])
        if not args.keep:
            for m in ("cp", "convert_naive"):
                shutil.rmtree(outs[m], ignore_errors=True) if outs[m].is_dir() else outs[m].unlink(missing_ok=True)
    doc = {"machine": machine(), "reps": args.reps, "cuda": cuda, "results": results}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    from .report import write_report

    write_report(doc, args.out)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    print(f"wrote {args.out}/results.json, results.md and plots")


if __name__ == "__main__":
    main()
