"""Which manifest: an append-only JSONL journal or SQLite (WAL), against the version-1 manifest.

Each store already holds N entries; we time recording one more finished file durably (JSONL: one
`write` + `fsync`; SQLite: one transaction, `synchronous=FULL`, WAL), reading all N back (what a
re-run does first), and the version-1 manifest's save (the whole document rewritten, fsync, rename).
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from convert.migrate.journal import Journal, read_journal


def _entry(i: int) -> dict:
    return {"kind": "file", "output": f"group{i % 100}/ckpt_{i:06d}", "bytes": 1234, "status": "converted",
            "sha256": f"{i:064x}", "verified": True, "seconds": 0.012, "size": 1234, "mtime_ns": 1700000000000000000 + i}


def _time_per_op(fn, reps: int) -> float:
    times = []
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _preload_jsonl(folder: Path, n: int) -> Journal:
    with open(folder / ".ckpt-convert-journal.jsonl", "w") as f:  # N entries already there, not timed
        f.write(json.dumps({"ckpt_convert_journal": 2, "source": "/src"}) + "\n")
        for i in range(n):
            f.write(json.dumps({"rel": f"g/{i}.pt", **_entry(i)}, separators=(",", ":")) + "\n")
    return Journal.open(folder, "/src")


def _preload_sqlite(folder: Path, n: int) -> sqlite3.Connection:
    db = sqlite3.connect(folder / "manifest.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # durable at each commit, as the journal's fsync is
    db.execute("CREATE TABLE files (rel TEXT PRIMARY KEY, entry TEXT NOT NULL)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO files VALUES (?, ?)", ((f"g/{i}.pt", json.dumps(_entry(i))) for i in range(n)))
    db.execute("COMMIT")
    return db


def jsonl_and_sqlite(folder: Path, n: int, reps: int) -> tuple[dict, dict]:
    """Appends timed alternately (JSONL, SQLite, JSONL, ...) so both see the same disk and load."""
    journal, db = _preload_jsonl(folder, n), _preload_sqlite(folder, n)
    times: dict[str, list[float]] = {"jsonl": [], "sqlite": []}
    for i in range(reps):
        t = time.perf_counter()
        journal.record(f"new/{i}.pt", _entry(n + i))
        times["jsonl"].append(time.perf_counter() - t)
        t = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (f"new/{i}.pt", json.dumps(_entry(n + i))))
        db.execute("COMMIT")
        times["sqlite"].append(time.perf_counter() - t)
    journal.close()
    t = time.perf_counter()
    assert len(read_journal(folder).entries) == n + reps
    jsonl_load = time.perf_counter() - t
    t = time.perf_counter()
    loaded = {rel: json.loads(e) for rel, e in db.execute("SELECT rel, entry FROM files")}
    sqlite_load = time.perf_counter() - t
    assert len(loaded) == n + reps
    db.close()
    return ({"append_s": statistics.median(times["jsonl"]), "load_s": jsonl_load},
            {"append_s": statistics.median(times["sqlite"]), "load_s": sqlite_load})


def legacy_manifest_save(folder: Path, n: int, reps: int) -> dict:
    """The version-1 manifest's `save()` as it was: pretty-printed JSON of every entry, fsync, rename."""
    entries = {f"g/{i}.pt": _entry(i) for i in range(n)}
    path = folder / ".ckpt-convert-manifest.json"

    def save(_: int) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "files": entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    return {"save_s": _time_per_op(save, reps)}


def run(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), reps: int = 100) -> list[dict]:
    rows = []
    for n in sizes:
        row: dict = {"entries": n}
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            row["jsonl"], row["sqlite"] = jsonl_and_sqlite(Path(tmp), n, reps)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            row["v1_manifest"] = legacy_manifest_save(Path(tmp), n, 3 if n >= 100_000 else 10)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":  # python -m benchmarks.migrate.journal_choice: refresh only this part of the results
    from .__main__ import RESULTS, save

    doc = json.loads((RESULTS / "migrate.json").read_text())
    doc["journal"] = run()
    save(doc, RESULTS)
