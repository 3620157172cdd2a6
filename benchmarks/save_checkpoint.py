"""save_checkpoint against torch.save, same process, same tree: `python -m benchmarks.save_checkpoint [--sizes 64,256]`.

For each size (MB of float32 weights, as a training checkpoint: model state dict + Adam state + epoch),
each method runs in a fresh process (--reps times, interleaved): wall time and the peak RSS above the
process's RSS once the tensors exist (what saving itself costs in memory). Prints ratios
save_checkpoint / torch.save per size, so the growth curve shows whether either cost scales with size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from pathlib import Path
from convert import save_checkpoint  # imported in both runs: its import is not counted as saving's memory
method, mb, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)
n = mb * (1 << 20) // 4 // 12
model = {f"layer{i}.weight": torch.randn(n) for i in range(4)}
tree = {"epoch": 3, "model": model, "optimizer": {"state": {i: {"step": torch.tensor(5.0), "exp_avg": torch.randn(n),
        "exp_avg_sq": torch.rand(n)} for i in range(4)}, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2, 3]}]}}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if method == "torch_save":
    torch.save(tree, out)
else:
    save_checkpoint(tree, out)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "extra_rss_mb": (peak - base) / 1024}))
"""


def measure(method: str, mb: int, work: Path) -> dict:
    out = work / f"{method}-{mb}"
    proc = subprocess.run([sys.executable, "-c", CHILD, method, str(mb), str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256", help="checkpoint sizes in MB, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mb in map(int, args.sizes.split(",")):
            runs: dict[str, list[dict]] = {"torch_save": [], "save_checkpoint": []}
            for _ in range(args.reps):
                for method in runs:
                    runs[method].append(measure(method, mb, Path(tmp)))
            t = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
            rss = {m: statistics.median(r["extra_rss_mb"] for r in rs) for m, rs in runs.items()}
            print(f"{mb:6d} MB  torch.save {t['torch_save']:.3f}s  save_checkpoint {t['save_checkpoint']:.3f}s  "
                  f"time ratio {t['save_checkpoint'] / t['torch_save']:.2f}  extra RSS: torch.save "
                  f"{rss['torch_save']:.0f} MB, save_checkpoint {rss['save_checkpoint']:.0f} MB")


if __name__ == "__main__":
    main()
