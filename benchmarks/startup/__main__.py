"""Start-up cost of the CLI: `python -m benchmarks.startup [--reps 7] [--baseline PATH]`.

Times, each in a fresh process (median of --reps): `ckpt-convert --version`, `scan` of a small
checkpoint, `convert` of a ~200 KB checkpoint, errors on bad arguments, and `verify`/`inspect` of a tiny
converted folder, for this checkout; and, as the baseline measured
in the same run, the same commands with `import torch` done first (what every process paid when
the read/write path imported torch). --baseline PATH adds a third column for another checkout (e.g.
a worktree of an older commit). Writes benchmarks/results/startup.json and .md, with the targets of
issue 24 (TARGETS: seconds for this checkout, torch installed) marked met or unmet.
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
# issue 24: every error on a bad argument < 0.5 s; verify of a tiny folder < 1.5 s (torch installed)
TARGETS = {"verify missing.pt x (bad argument)": 0.5, "verify small.pt (a file, not a folder)": 0.5,
           "convert small.pt notes.txt (a file as destination)": 0.5, "verify tiny folder": 1.5,
           "inspect tiny folder": 1.5}


def _time(code: str, args: list[str], pythonpath: Path, cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True)  # errors included
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
    (work / "notes.txt").write_text("notes")
    subprocess.run([sys.executable, "-c", "import torch; torch.save({'w': torch.ones(3)}, 'tiny.pt')"], cwd=work, check=True)
    subprocess.run([sys.executable, "-m", "convert", "convert", "-q", "tiny.pt", "tiny"], cwd=work, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    commands = {"--version": ["--version"], "scan 200 KB": ["scan", "small.pt"],
                "convert 200 KB": ["convert", "small.pt", "out", "--overwrite", "-q"],
                "verify missing.pt x (bad argument)": ["verify", "missing.pt", "x"],
                "verify small.pt (a file, not a folder)": ["verify", "small.pt"],
                "convert small.pt notes.txt (a file as destination)": ["convert", "small.pt", "notes.txt"],
                "verify tiny folder": ["verify", "tiny"], "inspect tiny folder": ["inspect", "tiny"]}
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
    names = list(variants)
    lines = ["| command | " + " | ".join(names) + " | ratio (torch first ÷ this) | target (this checkout) |",
             "|---|" + "---:|" * (len(names) + 1) + "---|"]
    for r in rows:
        target = TARGETS.get(r["command"])
        verdict = "" if target is None else f"< {target} s: {'met' if r[names[0]] < target else 'UNMET'}"
        r["target_s"], r["target_met"] = target, None if target is None else r[names[0]] < target
        lines.append(f"| {r['command']} | " + " | ".join(f"{r[n]:.3f} s" for n in names)
                     + f" | {r[names[1]] / r[names[0]]:.2f}× | {verdict} |")
    (args.out / "startup.json").write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=1) + "\n")
    (args.out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
