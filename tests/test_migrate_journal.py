"""The migrate journal at fleet scale: torn and corrupt lines, the version-1 manifest, compaction,
kill -9 of the driver at chosen points then resume, `--status`, and a walk that streams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convert.migrate import migrate, migrate_status
from convert.migrate.journal import JOURNAL_NAME, KILL_ENV, Journal, parse_journal, read_journal
from convert.migrate.lock import LOCK_NAME
from convert.migrate.manifest import MANIFEST_NAME, MIGRATED_SUFFIX
from convert.migrate.pool import run_bounded
from convert.migrate.report import REPORT_NAME
from convert.migrate.walker import Job, WalkStats, iter_jobs
from tests.helpers import REPO_ROOT, comparable_snapshot, rerun_until_no_temporaries

N_FILES = 10
STATE = (JOURNAL_NAME, LOCK_NAME, REPORT_NAME)


def _tree(root: Path, n: int = N_FILES) -> Path:
    for i in range(n):
        folder = root / f"g{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((4,), float(i)), "step": i}, folder / f"m{i}.pt")
    return root


def _outputs(dst: Path) -> dict[str, bytes]:
    """Every output file but the migrate state files, modulo each conversion's random folder id."""
    return {rel: data for rel, data in comparable_snapshot(dst).items() if rel.rsplit("/", 1)[-1] not in STATE}


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "convert", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: what every resumed run must end with."""
    root = tmp_path_factory.mktemp("ref")
    src = _tree(root / "src")
    report = migrate(src, root / "dst", jobs=1)
    assert report.summary["converted"] == N_FILES
    return src, root / "dst", report


# ------------------------------------------------------------------------------------ the file format

def test_torn_last_line_is_ignored_and_a_corrupt_line_is_dropped_and_counted():
    lines = [b'{"ckpt_convert_journal":2,"source":"/s"}', b'{"rel":"a.pt","status":"converted","size":1}',
             b'{"rel":"b.pt","status":"fa\xff', b'[1, 2]', b'{"rel":"c.pt","status":"failed"}',
             b'{"rel":"a.pt","status":"failed"}']
    state = parse_journal(b"\n".join(lines) + b'\n{"rel":"d.pt","sta')
    assert state.source == "/s"
    assert state.entries == {"a.pt": {"status": "failed"}, "c.pt": {"status": "failed"}}  # a later line wins
    assert state.dropped == 2 and state.torn_bytes == len(b'{"rel":"d.pt","sta')


def test_appending_after_a_torn_line_starts_on_a_clean_line(tmp_path):
    (tmp_path / JOURNAL_NAME).write_bytes(b'{"ckpt_convert_journal":2,"source":"/s"}\n'
                                          b'{"rel":"a.pt","status":"converted"}\n{"rel":"b.p')
    journal = Journal.open(tmp_path, "/s")
    journal.record("c.pt", {"status": "failed"})
    journal.close()
    state = read_journal(tmp_path)
    assert list(state.entries) == ["a.pt", "c.pt"] and state.dropped == 0 and state.torn_bytes == 0


def test_corrupt_journal_keeps_what_parses_and_says_how_many_lines_were_dropped(reference, tmp_path):
    src, _, _ = reference
    dst = tmp_path / "dst"
    migrate(src, dst, jobs=1)
    lines = (dst / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
    lost = json.loads(lines[3])["rel"]
    lines[3] = b"\x00\x00 garbage from a bad disk \x00\n"
    (dst / JOURNAL_NAME).write_bytes(b"".join(lines))
    again = _cli("migrate", str(src), str(dst), "-q")
    assert again.returncode == 0, again.stderr
    assert "warning" in again.stderr and "1 unreadable line(s) dropped" in again.stderr
    doc = json.loads((dst / REPORT_NAME).read_text())
    statuses = {rel: e["status"] for rel, e in doc["files"].items()}
    assert statuses.pop(lost) == "converted" and set(statuses.values()) == {"skipped"}
    state = read_journal(dst)
    assert state.dropped == 0 and len(state.entries) == N_FILES  # compacted without the bad line


def test_version_1_manifest_is_read_once_and_folded_into_the_journal(reference, tmp_path):
    src, _, _ = reference
    dst = tmp_path / "dst"
    migrate(src, dst, jobs=1)
    entries = read_journal(dst).entries
    (dst / JOURNAL_NAME).unlink()  # what an earlier release left: the v1 manifest only
    (dst / MANIFEST_NAME).write_text(json.dumps({"version": 1, "files": entries}, indent=1, sort_keys=True))
    assert migrate_status(dst)["done"] == N_FILES  # --status reads it too, without changing anything
    assert (dst / MANIFEST_NAME).exists()
    report = migrate(src, dst, jobs=1)
    assert report.summary["skipped"] == N_FILES and report.summary["converted"] == 0
    assert not (dst / MANIFEST_NAME).exists() and (dst / (MANIFEST_NAME + MIGRATED_SUFFIX)).is_file()
    assert read_journal(dst).entries.keys() == entries.keys()
    assert migrate(src, dst, jobs=1).summary["skipped"] == N_FILES


def test_unreadable_version_1_manifest_is_kept_and_reported(reference, tmp_path):
    src, _, _ = reference
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / MANIFEST_NAME).write_text('{"version": 1, "files": {"g0/m0.pt": ')
    report = migrate(src, dst, jobs=1)
    assert report.summary["converted"] == N_FILES
    assert any("unreadable version-1 manifest" in note for note in report.notes)
    assert (dst / MANIFEST_NAME).exists()


# --------------------------------------------------------------------------- kill -9, then resume

@pytest.mark.parametrize("point", ["journal:1", "journal:6", "compact"])
def test_driver_killed_at_any_point_resumes_to_the_same_outputs(reference, tmp_path, point):
    src, ref_dst, _ = reference
    dst = tmp_path / "dst"
    killed = _cli("migrate", str(src), str(dst), "-q", "-j", "2", env={KILL_ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = read_journal(dst)
    assert state.dropped == 0
    recorded = {rel: e for rel, e in state.entries.items() if e["status"] == "converted"}
    if point.startswith("journal:"):
        # the journal's finished lines; "started" lines name what was in flight when it was killed
        assert len([e for e in state.entries.values() if e["status"] != "started"]) == int(point.split(":")[1])
    else:
        assert len(recorded) == N_FILES and list(dst.glob(f"{JOURNAL_NAME}.tmp-*"))
    inodes = {rel: (dst / e["output"] / "checkpoint.json").stat().st_ino for rel, e in recorded.items()}

    if point == "journal:6":
        status = _cli("migrate", "--status", str(dst))
        assert status.returncode == 0, status.stderr
        assert "done      6" in status.stdout and f"pending   {N_FILES - 6}" in status.stdout, status.stdout
        doc = json.loads(_cli("migrate", str(src), str(dst), "--status", "--json").stdout)
        assert (doc["done"], doc["failed"], doc["pending"], doc["running_pid"]) == (6, 0, N_FILES - 6, None)

    resumed = migrate(src, dst, jobs=1)
    assert {rel for rel, e in resumed.files.items() if e["status"] == "skipped"} == set(recorded)
    assert resumed.summary["converted"] == N_FILES - len(recorded)
    assert {rel: (dst / e["output"] / "checkpoint.json").stat().st_ino for rel, e in recorded.items()} == inodes
    rerun_until_no_temporaries(dst, lambda: migrate(src, dst, jobs=1))
    assert _outputs(dst) == _outputs(ref_dst)
    assert len((dst / JOURNAL_NAME).read_text().splitlines()) == 1 + N_FILES


def test_rerun_with_nothing_to_do_does_not_rewrite_the_journal(reference):
    src, dst, _ = reference
    before = (dst / JOURNAL_NAME).stat()
    report = migrate(src, dst, jobs=1)
    assert report.summary["skipped"] == N_FILES
    after = (dst / JOURNAL_NAME).stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert not any(p.name == ".ckpt-convert-tmp" for p in dst.rglob("*"))  # the temp marker never ships


def test_status_counts_failures_and_changed_sources_as_pending(tmp_path):
    copy = tmp_path / "src"
    _tree(copy, 4)
    (copy / "bad.pt").write_bytes(b"not a checkpoint at all")
    dst = tmp_path / "dst"
    migrate(copy, dst, jobs=1)
    torch.save({"w": torch.zeros(9)}, copy / "g0" / "m0.pt")  # changed since: pending again
    torch.save({"w": torch.zeros(2)}, copy / "new.pt")  # never seen: pending
    status = migrate_status(dst)
    assert (status["done"], status["failed"], status["pending"]) == (4, 1, 2), status
    assert status["failed_files"][0]["file"] == "bad.pt"
    (dst / JOURNAL_NAME).rename(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="no migration journal"):
        migrate_status(dst)


# ----------------------------------------------------------------------------------------- streaming

def test_walk_streams_and_the_queue_pulls_jobs_only_as_they_are_needed(tmp_path):
    for i in range(40):
        (tmp_path / f"d{i:02d}").mkdir()
        (tmp_path / f"d{i:02d}" / "x.pt").write_bytes(b"\x80\x02K\x01.")
    stats = WalkStats()
    walk = iter_jobs(tmp_path, stats)
    first = next(walk)
    assert first.rel == "d00/x.pt" and stats.folders <= 2  # the first job comes before the walk is over
    pulled: list[int] = []

    def jobs():
        for i in range(1000):
            pulled.append(i)
            yield Job("file", tmp_path / f"{i}.pt", f"{i}.pt", str(i), 1)

    results = run_bounded(lambda job: {"status": "converted"}, jobs(), (), 1)
    next(results)
    assert len(pulled) <= 2
