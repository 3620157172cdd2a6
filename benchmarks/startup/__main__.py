"""Start-up cost of the CLI: `python -m benchmarks.startup [--reps 7] [--baseline PATH]`.

Times, each in a fresh process (median of --reps): `ckpt-convert --version`, `scan` of a small
checkpoint, and `convert` of a ~200 KB checkpoint, for this checkout; and, as the baseline measured
in the same run, the same commands with `import torch` done first (what every process paid when
the read/write path imported torch). --baseline PATH adds a third column for another checkout (e.g.
a worktree of an older commit). Writes benchmarks/results/startup.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRELOAD_TORCH = "import torch; "


def _time(code: str, args: list[str], pythonpath: Path, cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def _cli(preload: str) -> str:
    return preload + "import sys; from convert.cli import main; sys.exit(main(sys.argv[1:]))"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ckpt-startup-"))
    subprocess.run([sys.executable, "-c", "import torch; torch.manual_seed(0); torch.save({'model_state_dict': "
                    "{f'l{i}.weight': torch.randn(64, 128) for i in range(6)}, 'epoch': 1}, 'small.pt')"],
                   cwd=work, check=True)
    commands = {"--version": ["--version"], "scan 200 KB": ["scan", "small.pt"],
                "convert 200 KB": ["convert", "small.pt", "out", "--overwrite", "-q"]}
    variants = {"this checkout": (_cli(""), REPO), "this checkout + import torch first": (_cli(PRELOAD_TORCH), REPO)}
    if args.baseline:
        variants[f"baseline {args.baseline}"] = (_cli(""), args.baseline)
    rows = []
    for label, cmd in commands.items():
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.reps):  # interleaved: all variants see the same machine state
            for variant, (code, path) in variants.items():
                times[variant].append(_time(code, cmd, path, work))
        rows.append({"command": label, **{v: statistics.median(t) for v, t in times.items()}})
        print(label, {v: f"{statistics.median(t):.3f} s" for v, t in times.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=1) + "\n")
    names = list(variants)
    lines = ["| command | " + " | ".join(names) + " | ratio (torch first ÷ this) |", "|---|" + "---:|" * (len(names) + 1)]
    for r in rows:
        lines.append(f"| {r['command']} | " + " | ".join(f"{r[n]:.3f} s" for n in names)
                     + f" | {r[names[1]] / r[names[0]]:.2f}× |")
    (args.out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
