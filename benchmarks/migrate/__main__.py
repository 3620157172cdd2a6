"""`migrate` at fleet scale: `python -m benchmarks.migrate [--sizes 1000,10000] [--backends pool,ray]`.

For each size, a tree of tiny torch.save checkpoints (~1.3 KB each, 100 per folder) is migrated in
this process with the local process pool (`--jobs`) and with `--ray` on a local Ray instance:
wall time, files/s, driver CPU time (this process only: walk, journal, report, queue) and the
growth from the smallest to each larger size (target: 10k files ≤ 12× the time of 1k files in the
same run). Then a re-run over the largest finished tree (nothing to do), the journal choice
micro-benchmark (JSONL vs SQLite vs the version-1 manifest's save), and the driver alone at 10k and
100k files (`driver.py`). Parts can be refreshed alone: `python -m benchmarks.migrate.driver`,
`python -m benchmarks.migrate.journal_choice`. Writes migrate.json and
migrate.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from convert.migrate import migrate

from . import driver, journal_choice

FILES_PER_FOLDER = 100
RESULTS = Path(__file__).resolve().parents[1] / "results"


def make_tree(root: Path, n: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            folder = root / f"group{i // FILES_PER_FOLDER:04d}"
            if i % FILES_PER_FOLDER == 0:
                folder.mkdir(parents=True)
            torch.save({"w": torch.full((4,), float(i)), "step": i}, folder / f"ckpt_{i:06d}.pt")
    return root


def timed_migrate(src: Path, dst: Path, jobs: int, backend: str) -> dict:
    submit = None
    if backend == "ray":
        from convert.migrate.ray_runner import ray_submit

        submit = ray_submit(None)
    cpu, wall = time.process_time(), time.perf_counter()
    report = migrate(src, dst, jobs=jobs, submit=submit)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    files = len(report.files)
    assert report.exit_code == 0, report.summary
    return {"files": files, "wall_s": round(wall, 3), "files_per_s": round(files / wall, 1),
            "driver_cpu_s": round(cpu, 3), "driver_cpu_ms_per_file": round(1000 * cpu / files, 3),
            "summary": report.summary}


def to_markdown(doc: dict) -> str:
    out = [f"Machine: {doc['machine']}. Tiny checkpoints (torch.save of a 4-float tensor + an int, "
           f"~{doc['bytes_per_file']} bytes each, {FILES_PER_FOLDER} per folder); each file is converted and then "
           "verified against its source. Driver CPU = CPU time of the migrating process itself (walk, journal, "
           "report, queue), not its workers. Growth = time at N / time at the smallest N, same run.", "",
           "| backend | files | wall s | files/s | driver CPU s | driver CPU ms/file | growth vs smallest |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for row in doc["migrate"]:
        label = f"pool (--jobs {row['jobs']})" if row["backend"] == "pool" else f"{row['backend']} (local instance)"
        out.append(f"| {label} | {row['files']:,} | {row['wall_s']:.1f} | "
                   f"{row['files_per_s']:.1f} | {row['driver_cpu_s']:.2f} | {row['driver_cpu_ms_per_file']:.2f} | "
                   f"{row['growth']:.2f}× (for {row['files'] / row['smallest']:.0f}× the files) |")
    for row in doc["rerun"]:
        out.append(f"| {row['backend']} re-run, nothing to do | {row['files']:,} | {row['wall_s']:.2f} | "
                   f"{row['files_per_s']:.0f} | {row['driver_cpu_s']:.2f} | {row['driver_cpu_ms_per_file']:.3f} | |")
    out += ["", "Recording one finished file durably, with N entries already recorded (median), and reading all N:", "",
            "| N entries | JSONL journal: append + fsync | SQLite WAL: 1 transaction | v1 manifest: save | "
            "JSONL: read all | SQLite: read all | v1 manifest: whole run's saves (N × save(N)/2) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in doc["journal"]:
        v1 = row["v1_manifest"]["save_s"]
        out.append(f"| {row['entries']:,} | {1000 * row['jsonl']['append_s']:.3f} ms | "
                   f"{1000 * row['sqlite']['append_s']:.3f} ms | {1000 * v1:.1f} ms | "
                   f"{row['jsonl']['load_s']:.3f} s | {row['sqlite']['load_s']:.3f} s | "
                   f"{row['entries'] * v1 / 2 / 60:.1f} min |")
    if doc.get("driver"):
        from .driver import to_markdown as driver_markdown

        out.append(driver_markdown(doc["driver"]))
    return "\n".join(out) + "\n"


def save(doc: dict, out: Path) -> None:
    """Write what is measured so far (a long run interrupted still leaves its figures)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "migrate.json").write_text(json.dumps(doc, indent=1) + "\n")
    if doc.get("migrate"):
        (out / "migrate.md").write_text(to_markdown(doc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated file counts (default 1000,10000)")
    parser.add_argument("--backends", default="pool,ray", help="pool, ray or both (default pool,ray)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--journal-sizes", default="1000,10000,100000")
    parser.add_argument("--driver-sizes", default="10000,100000", help="driver-only runs (empty: none)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="migrate-bench-", dir=args.work))
    doc: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
                            f"torch {torch.__version__}",
                 "migrate": [], "rerun": [], "journal": []}
    try:
        trees = {}
        for n in sizes:
            t = time.perf_counter()
            trees[n] = make_tree(work / f"src{n}", n)
            print(f"made {n} checkpoints in {time.perf_counter() - t:.1f} s", flush=True)
        doc["bytes_per_file"] = (trees[sizes[0]] / "group0000" / "ckpt_000000.pt").stat().st_size
        for backend in args.backends.split(","):
            base = None
            for n in sizes:
                dst = work / f"dst-{backend}-{n}"
                row = {"backend": backend, "jobs": args.jobs, **timed_migrate(trees[n], dst, args.jobs, backend)}
                base = base or row["wall_s"]
                row.update(growth=round(row["wall_s"] / base, 2), smallest=sizes[0])
                doc["migrate"].append(row)
                print(json.dumps(row), flush=True)
                save(doc, args.out)
                if n == sizes[-1]:
                    again = {"backend": backend, **timed_migrate(trees[n], dst, args.jobs, backend)}
                    assert again["summary"] == {"converted": 0, "skipped": n, "unsafe": 0, "failed": 0}, again
                    doc["rerun"].append(again)
                    print(json.dumps(again), flush=True)
                    save(doc, args.out)
                shutil.rmtree(dst)
        doc["journal"] = journal_choice.run(tuple(int(s) for s in args.journal_sizes.split(",")))
        if args.driver_sizes:
            doc["driver"] = driver.run([int(s) for s in args.driver_sizes.split(",")], args.work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(doc, args.out)
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
