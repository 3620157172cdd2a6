"""Seconds from SIGTERM to exit of `ckpt-convert migrate SRC DST -j 2` while both workers convert a big file.

    python -m benchmarks.migrate.stop_latency [--repo PATH] [--mib 320] [--runs 3]

`--repo` is the checkout whose `convert` runs (default: this one), so a baseline can be measured from
`git archive <commit> convert | tar -x -C /tmp/base` with `--repo /tmp/base`. Prints, per run, the exit
code, the seconds, stderr, and what is left in DST besides migrate's journal and lock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(repo: Path, src: Path, dst: Path) -> str:
    shutil.rmtree(dst, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q", "-j", "2"],
                            env=env, cwd=src.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # a worker is busy: its temp folder exists
        if dst.is_dir() and any(".ckpt-convert-tmp-" in n for n in os.listdir(dst)):
            break
        time.sleep(0.02)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    left = sorted(set(os.listdir(dst)) - {".ckpt-convert-journal.jsonl", ".ckpt-convert.lock"})
    return f"exit {proc.returncode} after {time.monotonic() - start:.2f} s; stderr {err.strip()!r}; left in DST: {left}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--mib", type=int, default=320)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("a.pt", "b.pt"):
            torch.save({f"w{i}": torch.randn((args.mib << 18) // 10) for i in range(10)}, src / name)
        for _ in range(args.runs):
            print(one_run(args.repo.resolve(), src, Path(tmp) / "dst"), flush=True)


if __name__ == "__main__":
    main()
