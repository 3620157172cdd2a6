"""CUDA load benchmark: `python -m benchmarks.cuda [--dry-run] [--out DIR] [--layers N] [--width D]`.

Builds (once) a ~10 GB GPT-2-XL-width training checkpoint, converts it with ckpt-convert, and measures
in fresh processes, page cache warm and cold: torch.load(map_location="cuda"), safetensors
load_file(device="cuda"), load_checkpoint(map_location="cuda"), and the pinned host-to-device
ceiling. Writes results.json, results.md and load_cuda.png to --out (default $OUT or
benchmarks/results/cuda). --dry-run runs every step on a CPU machine with a small checkpoint and
the CPU counterpart of each device call, so the harness itself is tested where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.perf.__main__ import drop_cache, machine, run, size_of, warm

REPO = Path(__file__).resolve().parents[2]
METHODS = ["load_torch_cuda", "load_safetensors_cuda", "load_ours_cuda"]
ON_SOURCE = {"load_torch_cuda"}
CPU_STAND_IN = {"load_torch_cuda": "load_torch", "load_safetensors_cuda": "load_safetensors",
                "load_ours_cuda": "load_ours_full"}  # --dry-run: the same files, no device
LABELS = {"load_torch_cuda": "torch.load(map_location=cuda)", "load_safetensors_cuda": "safetensors load_file(device=cuda)",
          "load_ours_cuda": "ckpt-convert load_checkpoint(map_location=cuda)", "h2d_pinned": "pinned host→device copy (ceiling)"}
TARGET_VS_SAFETENSORS = 3.0
TARGET_VS_CEILING = 0.8


def _python(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, check=True, capture_output=True, text=True)


def build(work: Path, layers: int, width: int) -> tuple[Path, Path]:
    src, folder = work / f"gpt2xl-{layers}l-{width}.pt", work / f"gpt2xl-{layers}l-{width}"
    if not src.exists():
        t0 = time.perf_counter()
        print(_python("benchmarks.cuda.build", str(src), "--layers", str(layers), "--width", str(width)).stdout.strip(),
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    if not (folder / "checkpoint.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        _python("convert", "convert", str(src), str(folder), "-q")
        print(f"converted in {time.perf_counter() - t0:.0f} s", flush=True)
    return src, folder


def measure(src: Path, folder: Path, dry: bool, reps: int, cold: bool) -> list[dict]:
    results = []
    for cache in ["warm"] + (["cold"] if cold else []):
        for _ in range(reps):
            for method in METHODS:
                target = src if method in ON_SOURCE else folder
                (drop_cache if cache == "cold" else warm)([target])
                r = run(CPU_STAND_IN[method] if dry else method, target)
                size = size_of(target)
                results.append({"method": method, "cache": cache, "bytes": size, "seconds": r["seconds"],
                                "gb_per_s": size / r["seconds"] / 1e9, "peak_rss": r["peak_rss"]})
                print(f"  {cache:4s} {method:24s} {r['seconds']:7.3f} s  {results[-1]['gb_per_s']:6.2f} GB/s", flush=True)
        h2d = json.loads(_python("benchmarks.cuda.h2d", *(["--dry-run"] if dry else [])).stdout.strip().splitlines()[-1])
        results.append({"method": "h2d_pinned", "cache": cache, **h2d})
        print(f"  {cache:4s} {'h2d_pinned':24s} {h2d['seconds']:7.3f} s  {h2d['gb_per_s']:6.2f} GB/s", flush=True)
    return results


def best(results: list[dict], method: str, cache: str) -> dict:
    return max((r for r in results if r["method"] == method and r["cache"] == cache), key=lambda r: r["gb_per_s"])


def verdicts(results: list[dict], caches: list[str]) -> list[dict]:
    out = []
    for cache in caches:
        ours, st, ceiling = (best(results, m, cache) for m in ("load_ours_cuda", "load_safetensors_cuda", "h2d_pinned"))
        out.append({"cache": cache, "vs_safetensors": ours["gb_per_s"] / st["gb_per_s"],
                    "vs_ceiling": ours["gb_per_s"] / ceiling["gb_per_s"],
                    "meets_vs_safetensors": ours["gb_per_s"] >= TARGET_VS_SAFETENSORS * st["gb_per_s"],
                    "meets_vs_ceiling": ours["gb_per_s"] >= TARGET_VS_CEILING * ceiling["gb_per_s"]})
    return out


def markdown(doc: dict) -> str:
    m = doc["machine"]
    head = "DRY RUN (CPU stand-ins, not device numbers)\n\n" if doc["dry_run"] else ""
    lines = [head + f"GPU: {m.get('gpu') or 'none'}; CPU: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
             f"safetensors {m['safetensors']}; checkpoint {doc['checkpoint_bytes'] / 1e9:.2f} GB "
             f"({doc['checkpoint']}). Best of {doc['reps']} fresh-process runs; times exclude imports.", "",
             "| cache | method | s | GB/s |", "|---|---|---:|---:|"]
    for cache in doc["caches"]:
        for method in [*METHODS, "h2d_pinned"]:
            r = best(doc["results"], method, cache)
            lines.append(f"| {cache} | {LABELS[method]} | {r['seconds']:.3f} | {r['gb_per_s']:.2f} |")
    lines += ["", "| cache | ckpt-convert ÷ safetensors (target ≥ 3) | ckpt-convert ÷ pinned ceiling (target ≥ 0.8) |",
              "|---|---:|---:|"]
    for v in doc["verdicts"]:
        lines.append(f"| {v['cache']} | {v['vs_safetensors']:.2f} {'ok' if v['meets_vs_safetensors'] else 'MISSED'} | "
                     f"{v['vs_ceiling']:.2f} {'ok' if v['meets_vs_ceiling'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, out: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    methods = [*METHODS, "h2d_pinned"]
    width = 0.8 / len(doc["caches"])
    for i, cache in enumerate(doc["caches"]):
        ax.bar([j + i * width for j in range(len(methods))], [best(doc["results"], m, cache)["gb_per_s"] for m in methods],
               width, label=f"page cache {cache}")
    ax.set_xticks([j + width * (len(doc["caches"]) - 1) / 2 for j in range(len(methods))])
    ax.set_xticklabels([LABELS[m].replace(" (", "\n(") for m in methods], fontsize=7)
    ax.set_ylabel("GB/s")
    ax.set_title(("[dry run] " if doc["dry_run"] else "") + f"load to CUDA — {doc['machine'].get('gpu') or 'no GPU'}")
    ax.legend()
    fig.tight_layout()
    path = out / "load_cuda.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cuda", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="no device calls: small checkpoint, CPU stand-ins")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks/results/cuda"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/ckpt-convert-cuda-bench"))
    ap.add_argument("--layers", type=int, default=None, help="default 30 (about 10 GB); 2 with --dry-run")
    ap.add_argument("--width", type=int, default=None, help="default 1600; 64 with --dry-run")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and its conversion in --work")
    args = ap.parse_args(argv)
    layers = args.layers or (2 if args.dry_run else 30)
    width = args.width or (64 if args.dry_run else 1600)
    if not args.dry_run:
        probe = subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"], capture_output=True)
        if probe.returncode != 0:
            raise SystemExit("no CUDA device visible to torch: run with --dry-run on a machine without a GPU")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    src, folder = build(args.work, layers, width)
    caches = ["warm"] + ([] if args.no_cold else ["cold"])
    results = measure(src, folder, args.dry_run, args.reps, not args.no_cold)
    doc = {"dry_run": args.dry_run, "machine": machine(), "checkpoint": src.name, "checkpoint_bytes": src.stat().st_size,
           "reps": args.reps, "caches": caches, "results": results, "verdicts": verdicts(results, caches)}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(doc))
    plot(doc, args.out)
    print(markdown(doc))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
