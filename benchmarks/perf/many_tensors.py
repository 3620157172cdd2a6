"""Many small tensors (a mixture-of-experts-sized training checkpoint): `python -m benchmarks.perf.many_tensors`.

The checkpoint is `{"model": N parameters of 16 float32, "optimizer": AdamW-like state}` where the
state holds exp_avg and exp_avg_sq per parameter and `step` as an int (older torch): 3N tensors.
For each tensor count (1k, 10k, 100k, 300k by default) and in a fresh process each, it measures
conversion against `torch.load(weights_only=True)` of the same file, `load_checkpoint` (lazy and
full, every storage touched) against torch.load (touched the same way), the sidecar's size against
the one the previous converter writes (`--baseline-path`, e.g. /work/main, run with that PYTHONPATH),
and peak RSS. Writes many_tensors.json/.md (+ .png when matplotlib is there) to --out.

Targets (issue 11), checked here and nowhere else: convert ≤ 1× torch.load, load ≤ 0.5× torch.load,
sidecar ≤ 1/4 of the baseline's, convert peak RSS ≤ torch.load's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PARAM_NUMEL = 16  # 300k tensors = 107 MB (issue 11 measured an 85 MB file of that count)
REPO = Path(__file__).resolve().parents[2]


def build(n_params: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    model = {f"layers.{i}.weight": torch.randn(PARAM_NUMEL, generator=g) for i in range(n_params)}
    state = {i: {"step": 1, "exp_avg": torch.randn(PARAM_NUMEL, generator=g),
                 "exp_avg_sq": torch.rand(PARAM_NUMEL, generator=g)} for i in range(n_params)}
    groups = [{"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
               "params": list(range(n_params))}]
    return {"epoch": 1, "model": model, "optimizer": {"state": state, "param_groups": groups}}


def generate(n_tensors: int, folder: Path) -> Path:
    """Write the checkpoint once, in a child: torch in this process would raise the peak RSS that the
    measuring children inherit (Linux keeps ru_maxrss across fork and exec)."""
    path = folder / f"many-{n_tensors}.pt"
    if not path.exists():
        code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from benchmarks.perf.many_tensors import build; "
                "torch.save(build(int(sys.argv[2]) // 3), sys.argv[3])")
        tmp = path.with_suffix(".tmp")
        subprocess.run([sys.executable, "-c", code, str(REPO), str(n_tensors), str(tmp)], check=True, cwd="/")
        tmp.rename(path)
    return path


def measure(method: str, src: Path, dst: Path) -> dict:
    """Run in the child: one operation, timed, with the process's peak RSS."""
    import time
    import warnings

    warnings.simplefilter("ignore")
    import torch

    import convert
    from benchmarks.perf.measure import _peak, _touch

    start = time.perf_counter()
    out: dict = {}
    if method == "torch_load":
        tree = torch.load(src, weights_only=True)
        out["load_s"] = time.perf_counter() - start
        _touch(tree)
    elif method == "convert":
        convert.convert_checkpoint(src, dst, overwrite=True)
    elif method in ("load_lazy", "load_full"):
        tree = convert.load_checkpoint(dst, mmap=method == "load_lazy")
        out["load_s"] = time.perf_counter() - start
        _touch(tree)
    else:
        raise SystemExit(f"unknown method {method}")
    out["seconds"] = time.perf_counter() - start
    out["peak_rss"] = _peak()
    return out


# The child imports `convert` from the checkout under test (this one, or the baseline) first, then
# this benchmark module from this checkout: both folders hold a `convert` and a `benchmarks` package.
_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); import convert; sys.path.remove(sys.argv[1]); "
          "sys.path.insert(0, sys.argv[2]); from benchmarks.perf.many_tensors import main; main(sys.argv[3:])")


def run_child(method: str, src: Path, dst: Path, pythonpath: Path = REPO) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(pythonpath), str(REPO), "--child", method, str(src), str(dst)],
                          capture_output=True, text=True, cwd="/", env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sidecar_bytes(folder: Path) -> int:
    return (folder / "checkpoint.json").stat().st_size


def output_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def bench(counts: list[int], work: Path, baseline: Path | None, out: Path) -> list[dict]:
    """Measure every count; the results are rewritten after each (a long run leaves what it finished)."""
    rows: list[dict] = []
    for n in counts:
        src = generate(n, work)
        dst, base_dst = work / f"many-{n}.out", work / f"many-{n}.base"
        row: dict = {"tensors": n, "input_bytes": src.stat().st_size}
        row["torch_load"] = run_child("torch_load", src, dst)
        row["convert"] = run_child("convert", src, dst)
        row["load_lazy"] = run_child("load_lazy", src, dst)
        row["load_full"] = run_child("load_full", src, dst)
        row["sidecar_bytes"], row["output_bytes"] = sidecar_bytes(dst), output_bytes(dst)
        if baseline is not None:
            row["baseline_convert"] = run_child("convert", src, base_dst, pythonpath=baseline)
            row["baseline_sidecar_bytes"] = sidecar_bytes(base_dst)
            shutil.rmtree(base_dst)
        shutil.rmtree(dst)
        t = row["torch_load"]["seconds"]
        row["ratios"] = {
            "convert_vs_torch_load": row["convert"]["seconds"] / t,
            "load_lazy_vs_torch_load": row["load_lazy"]["seconds"] / t,
            "load_full_vs_torch_load": row["load_full"]["seconds"] / t,
            "convert_rss_vs_torch_load": row["convert"]["peak_rss"] / row["torch_load"]["peak_rss"],
        }
        if baseline is not None:
            row["ratios"]["sidecar_vs_baseline"] = row["sidecar_bytes"] / row["baseline_sidecar_bytes"]
            row["ratios"]["baseline_convert_vs_torch_load"] = row["baseline_convert"]["seconds"] / t
        print(json.dumps(row), flush=True)
        rows.append(row)
        write_results(rows, out)
    return rows


def write_results(rows: list[dict], out: Path) -> None:
    (out / "many_tensors.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "many_tensors.md").write_text(markdown(rows))
    plot(rows, out / "many_tensors.png")


def markdown(rows: list[dict]) -> str:
    mib = 1 << 20
    lines = ["| tensors | input MB | torch.load s | convert s (×) | previous convert s (×) | load lazy s (×) | "
             "load full s (×) | sidecar KB | previous sidecar KB (×) | B/tensor | peak RSS MiB torch.load / convert / previous |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        x = r["ratios"]
        base = (f"{r['baseline_convert']['seconds']:.2f} ({x['baseline_convert_vs_torch_load']:.2f})"
                if "baseline_convert" in r else "–")
        base_side = (f"{r['baseline_sidecar_bytes'] / 1e3:,.0f} ({x['sidecar_vs_baseline']:.3f})"
                     if "baseline_sidecar_bytes" in r else "–")
        lines.append(
            f"| {r['tensors']:,} | {r['input_bytes'] / 1e6:.1f} | {r['torch_load']['seconds']:.2f} | "
            f"{r['convert']['seconds']:.2f} ({x['convert_vs_torch_load']:.2f}) | {base} | "
            f"{r['load_lazy']['seconds']:.2f} ({x['load_lazy_vs_torch_load']:.2f}) | "
            f"{r['load_full']['seconds']:.2f} ({x['load_full_vs_torch_load']:.2f}) | "
            f"{r['sidecar_bytes'] / 1e3:,.0f} | {base_side} | {r['sidecar_bytes'] / r['tensors']:.0f} | "
            f"{r['torch_load']['peak_rss'] / mib:,.0f} / {r['convert']['peak_rss'] / mib:,.0f} / "
            f"{r['baseline_convert']['peak_rss'] / mib if 'baseline_convert' in r else 0:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = [r["tensors"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [("torch_load", "torch.load(weights_only=True)"), ("convert", "convert"),
                       ("baseline_convert", "previous convert"), ("load_lazy", "load_checkpoint lazy"),
                       ("load_full", "load_checkpoint full")]:
        if all(key in r for r in rows):
            ax1.plot(n, [r[key]["seconds"] for r in rows], marker="o", label=label)
    ax1.set(xscale="log", yscale="log", xlabel="tensors", ylabel="seconds", title="time")
    ax1.legend(fontsize=8)
    ax2.plot(n, [r["torch_load"]["peak_rss"] / (1 << 20) for r in rows], marker="o", label="torch.load peak RSS")
    ax2.plot(n, [r["convert"]["peak_rss"] / (1 << 20) for r in rows], marker="o", label="convert peak RSS")
    ax2.set(xscale="log", xlabel="tensors", ylabel="MiB", title="peak RSS")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str]) -> None:
    if argv[:1] == ["--render"]:  # re-render the table and plot from a results JSON
        out = Path(argv[1])
        write_results(json.loads((out / "many_tensors.json").read_text()), out)
        return
    if argv[:1] == ["--child"]:
        print(json.dumps(measure(argv[1], Path(argv[2]), Path(argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000,100000,300000", help="tensor counts, comma-separated")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ckpt-bench-many"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--baseline-path", type=Path, default=None,
                        help="a checkout of the previous converter, to measure its sidecar size and time")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = bench([int(c) for c in args.counts.split(",")], args.work, args.baseline_path, args.out)
    print(markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
