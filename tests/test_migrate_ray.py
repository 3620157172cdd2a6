"""`migrate --ray`: the same migration on a local Ray instance, and a worker killed mid-file."""

from __future__ import annotations

import collections
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from convert.errors import ConvertError
from convert.migrate import migrate
from convert.migrate.journal import JOURNAL_NAME, read_journal
from convert.migrate.lock import LOCK_NAME
from convert.migrate.ray_runner import FAULT_ENV, ray_submit, task_memory
from convert.migrate.walker import Job
from tests.helpers import EvilSystem, comparable_snapshot, make_net

ray = pytest.importorskip("ray")


@pytest.fixture
def small_zoo(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    model = make_net(seed=2)
    for i in range(6):
        torch.save({"epoch": i, "model_state_dict": model.state_dict()}, src / "a" / f"ck{i}.pt")
    torch.save(model, src / "a" / "b" / "whole.pth", _use_new_zipfile_serialization=False)
    with open(src / "evil.pkl", "wb") as f:
        pickle.dump(EvilSystem(tmp_path / "CANARY"), f)
    (src / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    return src


def _ray_migrate(src: Path, dst: Path):
    try:
        return migrate(src, dst, submit=ray_submit(None))
    except ConvertError as exc:
        if "cannot start or reach Ray" in str(exc):
            pytest.skip(f"Ray cannot start here: {exc}")
        raise


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file but migrate's state, modulo each conversion's random folder id."""
    skip = {JOURNAL_NAME, LOCK_NAME, "ckpt-convert-report.json"}
    return {rel: data for rel, data in comparable_snapshot(folder).items() if rel.rsplit("/", 1)[-1] not in skip}


def test_ray_migration_matches_the_process_pool(small_zoo, tmp_path):
    pool = migrate(small_zoo, tmp_path / "pool", jobs=2)
    on_ray = _ray_migrate(small_zoo, tmp_path / "ray")
    assert {k: e["status"] for k, e in on_ray.files.items()} == {k: e["status"] for k, e in pool.files.items()}
    assert collections.Counter(e["status"] for e in on_ray.files.values()) == {"converted": 7, "unsafe": 1, "failed": 1}
    assert on_ray.exit_code == pool.exit_code == 3  # unsafe and failed
    assert _files(tmp_path / "ray") == _files(tmp_path / "pool")
    assert not (tmp_path / "CANARY").exists()


def test_killed_ray_worker_is_retried_and_the_journal_stays_consistent(small_zoo, tmp_path, monkeypatch):
    marker = tmp_path / "worker.pid"
    monkeypatch.setenv(FAULT_ENV, f"a/ck3.pt:{marker}")
    killed = []

    def kill_when_started() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                pid = int(marker.read_text())
                journal = read_journal(tmp_path / "dst")  # while the worker hangs, ck3 is not in the journal
                killed.append(journal.entries.get("a/ck3.pt", {}).get("status") == "started" and journal.dropped == 0)
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    report = _ray_migrate(small_zoo, tmp_path / "dst")
    killer.join(timeout=5)
    assert killed == [True], "the hanging first attempt was never seen and killed"
    assert report.files["a/ck3.pt"]["status"] == "converted" and report.files["a/ck3.pt"]["verified"]
    journal = read_journal(tmp_path / "dst")  # the Ray path writes the same journal as the pool
    assert journal.entries["a/ck3.pt"]["status"] == "converted"
    assert {k: e["status"] for k, e in journal.entries.items()} == {k: e["status"] for k, e in report.files.items()}
    assert len((tmp_path / "dst" / JOURNAL_NAME).read_text().splitlines()) == 1 + len(report.files)  # compacted
    again = _ray_migrate(small_zoo, tmp_path / "dst")  # a re-run reads the journal: nothing converted again
    assert collections.Counter(e["status"] for e in again.files.values()) == {"skipped": 7, "unsafe": 1, "failed": 1}
    assert not [p for p in (tmp_path / "dst").rglob(".*") if ".tmp-" in p.name]


def test_tasks_declare_memory_growing_with_the_file():
    small = Job("file", Path("a.pt"), "a.pt", "a", 10 << 20)
    big = Job("file", Path("b.pt"), "b.pt", "b", 10 << 30)
    assert task_memory(big) - task_memory(small) == 2 * ((10 << 30) - (10 << 20))


def test_a_retried_ray_task_adopts_the_output_its_earlier_attempt_installed(tmp_path):
    """Ray re-runs a task whose worker died after installing the output: the same task, run again, is done."""
    from convert.migrate.walker import find_jobs

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "bert").mkdir(parents=True)
    (src / "bert" / "config.json").write_text('{"model_type": "bert"}')
    torch.save({"emb.weight": torch.ones(4, 2)}, src / "bert" / "pytorch_model.bin")
    torch.save({"w": torch.ones(3)}, src / "a.pt")
    jobs = find_jobs(src)[0]
    assert {j.kind for j in jobs} == {"file", "hf"}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    except Exception as exc:
        pytest.skip(f"Ray cannot start here: {exc}")
    try:
        submit = ray_submit(None)  # Ray already up: the submit leaves it running between the two attempts
        first = dict((j.rel, e) for j, e in submit(jobs, str(dst), None))
        snapshot = {p: p.stat().st_ino for p in dst.rglob("*")}
        retried = dict((j.rel, e) for j, e in submit(jobs, str(dst), None))
    finally:
        ray.shutdown()
    assert all(e["status"] == "converted" and not e.get("adopted") for e in first.values()), first
    assert all(e["status"] == "converted" and e["verified"] and e.get("adopted") for e in retried.values()), retried
    assert {p: p.stat().st_ino for p in dst.rglob("*")} == snapshot  # nothing converted or replaced again


def test_sigterm_stops_a_ray_migrate_cleanly(small_zoo, tmp_path):
    """Ray's init takes SIGTERM over (a stack dump, exit 1); migrate takes it back: tasks cancelled, 143."""
    import subprocess
    import sys

    from convert.migrate import migrate_status
    from tests.helpers import REPO_ROOT, stale_temporaries

    dst, marker = tmp_path / "dst", tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", FAULT_ENV: f"a/ck3.pt:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "convert", "migrate", str(small_zoo), str(dst), "-q", "--ray"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (marker.exists() and marker.read_text().strip()):
            if proc.poll() is not None:
                err = proc.communicate()[1]
                if "cannot start or reach Ray" in err:
                    pytest.skip(f"Ray cannot start here: {err.strip()}")
                pytest.fail(f"migrate ended before the task hung: {err}")
            assert time.monotonic() < deadline
            time.sleep(0.1)
        worker = int(marker.read_text())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Ray logs its own start-up lines; migrate's is the last one
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "ckpt-convert: terminated", err
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        with open(f"/proc/{worker}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        time.sleep(0.2)
    assert read_journal(dst).entries["a/ck3.pt"]["status"] == "interrupted"
    assert migrate_status(dst)["running_pid"] is None
    again = migrate(small_zoo, dst, jobs=1)
    assert again.files["a/ck3.pt"]["status"] == "converted" and not stale_temporaries(dst)
