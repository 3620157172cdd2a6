"""Operating a migrate: a prompt stop on SIGTERM/SIGINT (busy workers killed, nothing half-written left, the
interrupted jobs converted by the re-run), retries that find their output already installed, and a re-run
with --sign-key that signs what earlier runs converted unsigned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convert.migrate import migrate, migrate_status
from convert.migrate.journal import read_journal
from convert.migrate.worker import FAULT_ENV
from convert.ops.verify import verify_folder
from convert.primitives.faults import WRITE_ENV
from tests.helpers import REPO_ROOT, stale_temporaries

NAMES = ("a.pt", "b.pt", "c.pt", "d.pt")


def _sources(src: Path) -> None:
    src.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        torch.save({"w": torch.full((64,), float(i)), "step": i}, src / name)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_CONVERT_")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", **extra}


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z...), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z", "X")


def _children(pid: int) -> list[int]:
    """The pool workers of the driver `pid` (not multiprocessing's resource tracker, which it also starts)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if parent == pid and b"spawn_main" in f.read():
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"migrate ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the workers never got busy"
        time.sleep(0.05)


def _no_partial_outputs(dst: Path) -> None:
    """Nothing half-built in DST: no marked temp folder, no writer lock, every output whole and intact."""
    assert not stale_temporaries(dst)
    assert not [p for p in dst.rglob("*") if p.name.endswith(".ckpt-convert-lock")]
    for name in NAMES:
        if (dst / name).exists():
            assert verify_folder(dst / name).ok, name


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_the_busy_workers_at_once_and_the_rerun_converts_the_rest(tmp_path, sig, code, word):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _sources(src)
    # SIGTERM: every worker stops itself (SIGSTOP) mid-write, its temp folder half-built; a stopped process
    # ignores SIGTERM, so only a kill ends it. SIGINT: a worker hangs in its first job (it would for 600 s).
    marker = tmp_path / "worker.pid"
    fault = {WRITE_ENV: "after-data:stop"} if sig == signal.SIGTERM else {FAULT_ENV: f"b.pt:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q", "-j", "2"],
                            env=_env(**fault), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        if sig == signal.SIGTERM:
            _wait_for(lambda: any(_state(pid) == "T" for pid in _children(proc.pid)) and stale_temporaries(dst), proc)
        else:
            _wait_for(lambda: marker.exists() and marker.read_text().strip(), proc)
        workers = _children(proc.pid)
        assert workers and all(not _gone(pid) for pid in workers)
        busy = stale_temporaries(dst) if sig == signal.SIGTERM else [int(marker.read_text())]
        assert busy
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)  # generous: a correctness bound (busy jobs are not waited for)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code and err.strip() == f"ckpt-convert: {word}", (proc.returncode, err)
    assert all(_gone(pid) for pid in workers), "a pool worker outlived its stopped driver"
    _no_partial_outputs(dst)
    journal = read_journal(dst)
    stopped = {rel for rel, e in journal.entries.items() if e["status"] == "interrupted"}
    assert stopped and all(f"({sig.name})" in journal.entries[rel]["reason"] for rel in stopped)
    assert migrate_status(dst)["pending"] == len(NAMES) - migrate_status(dst)["done"] >= len(stopped)

    again = migrate(src, dst, jobs=2)
    assert again.exit_code == 0 and again.summary["converted"] >= len(stopped), again.files
    assert all(again.files[name]["status"] in ("converted", "skipped") and again.files[name]["verified"]
               for name in NAMES)
    assert all(verify_folder(dst / name).ok for name in NAMES)
    assert not stale_temporaries(dst)
    assert migrate_status(dst)["pending"] == 0
