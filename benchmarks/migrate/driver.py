"""The driver alone at 10k and 100k files: `python -m benchmarks.migrate.driver [--sizes 10000,100000]`.

Converting 100k files does not fit a 2-core machine's time budget, but the driver's share does: this
runs the real `migrate` (walk, fingerprint, journal append + fsync per file, report, progress
accounting, lock, cleanup checks) with a `submit` that stands in for the workers: for each job it
creates the output folder with an empty checkpoint.json and returns a verified entry at once. So the
numbers are the driver's cost per file, and whether it stays flat from 10k to 100k; then a re-run
with nothing to do. Results are added to migrate.json / migrate.md under "driver".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from convert.migrate import migrate
from convert.migrate.walker import Job

PICKLE = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01K\x01s."  # {"w": 1}, protocol 2


def make_tree(root: Path, n: int, per_folder: int = 100) -> None:
    for i in range(n):
        folder = root / f"group{i // per_folder:05d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"ckpt_{i:06d}.pkl").write_bytes(PICKLE)


def stand_in_workers(jobs: Iterable[Job], dst: str, _shard: str | None) -> Iterator[tuple[Job, dict]]:
    for job in jobs:
        out = Path(dst) / job.output_rel
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoint.json").write_bytes(b"{}")
        yield job, {"kind": job.kind, "output": job.output_rel, "bytes": job.size, "sha256": "0" * 64,
                    "verified": True, "status": "converted", "seconds": 0.0}


def measure(src: Path, dst: Path) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    report = migrate(src, dst, submit=stand_in_workers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(report.files)
    return {"files": n, "wall_s": round(wall, 3), "files_per_s": round(n / wall, 1), "driver_cpu_s": round(cpu, 3),
            "driver_cpu_ms_per_file": round(1000 * cpu / n, 4), "summary": report.summary}


def run(sizes: list[int], work: Path | None) -> list[dict]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="migrate-driver-", dir=work))
    try:
        for n in sizes:
            make_tree(tmp / f"src{n}", n)
            first = {"files_found": n, "run": "first", **measure(tmp / f"src{n}", tmp / f"dst{n}")}
            again = {"files_found": n, "run": "re-run, nothing to do", **measure(tmp / f"src{n}", tmp / f"dst{n}")}
            assert again["summary"]["skipped"] == n, again
            rows += [first, again]
            print(json.dumps(first), json.dumps(again), sep="\n", flush=True)
            shutil.rmtree(tmp / f"src{n}")
            shutil.rmtree(tmp / f"dst{n}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    base = {r["run"]: r for r in rows if r["files"] == rows[0]["files"]}
    out = ["", "Driver alone (stand-in workers that only create the output folder; real walk, journal with one "
           "fsync per file, report):", "",
           "| files | run | wall s | files/s | driver CPU s | driver CPU ms/file | time growth vs smallest |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        growth = r["wall_s"] / base[r["run"]]["wall_s"]
        out.append(f"| {r['files']:,} | {r['run']} | {r['wall_s']:.2f} | {r['files_per_s']:,.0f} | "
                   f"{r['driver_cpu_s']:.2f} | {r['driver_cpu_ms_per_file']:.3f} | {growth:.2f}× |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")], args.work)
    from .__main__ import save

    path = args.out / "migrate.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc["driver"] = rows
    save(doc, args.out)
    print(to_markdown(rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
