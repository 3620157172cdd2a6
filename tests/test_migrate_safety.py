"""migrate never touches anything but its destination's own temp folders: SRC/DST overlap, marker-based
cleanup, one migrate per DST (lock), FIFOs and sockets in the tree, workers that die with the driver."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convert.migrate import migrate, migrate_status
from convert.migrate.overlap import OverlappingFolders
from convert.migrate.report import REPORT_NAME
from convert.migrate.worker import FAULT_ENV
from tests.helpers import REPO_ROOT


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", **extra}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, not yet reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ SRC / DST overlap

@pytest.fixture
def zoo(tmp_path) -> Path:
    """The issue's reproduction: a user's backup folder whose name looks like a temp folder, inside SRC."""
    zoo = tmp_path / "zoo"
    (zoo / "old" / ".backup.old-2023").mkdir(parents=True)
    (zoo / "old" / ".backup.old-2023" / "weights.pt").write_bytes(b"precious")
    _leftover_of_a_killed_writer(zoo / "old" / "m")  # a real stale temp folder, even so
    torch.save({"w": torch.ones(3)}, zoo / "old" / "m.pt")
    return zoo


def test_destination_containing_the_source_is_refused_and_nothing_is_deleted(zoo):
    before = _files(zoo)
    with pytest.raises(OverlappingFolders, match="contains the source"):
        migrate(zoo / "old", zoo, jobs=1)
    assert _files(zoo) == before and next((zoo / "old").glob(".m.ckpt-convert-tmp-*")).is_dir()
    cli = subprocess.run([sys.executable, "-m", "convert", "migrate", str(zoo / "old"), str(zoo), "-q"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "contains the source" in cli.stderr and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert _files(zoo) == before


def test_same_folder_and_symlinked_destination_are_refused(zoo, tmp_path):
    before = _files(zoo)
    with pytest.raises(OverlappingFolders, match="is the source"):
        migrate(zoo / "old", zoo / "old" / "." , jobs=1)
    link = tmp_path / "link"
    link.symlink_to(zoo)
    with pytest.raises(OverlappingFolders, match="contains the source"):
        migrate(zoo / "old", link, jobs=1)
    with pytest.raises(OverlappingFolders, match="contains the source"):
        migrate(link / "old", zoo, jobs=1)
    assert _files(zoo) == before


def test_destination_inside_the_source_is_skipped_by_the_walker(zoo):
    src, dst = zoo / "old", zoo / "old" / "converted"
    first = migrate(src, dst, jobs=1)
    assert first.summary["converted"] == 1 and (dst / "m.pt" / "checkpoint.json").is_file()
    again = migrate(src, dst, jobs=1)
    assert again.summary == first.summary | {"converted": 0, "skipped": 1}
    assert set(again.files) == {"m.pt", ".backup.old-2023/weights.pt"}  # nothing under dst taken for a source
    assert (src / ".backup.old-2023" / "weights.pt").read_bytes() == b"precious"
    assert next(src.glob(".m.ckpt-convert-tmp-*")).is_dir()  # in SRC, not in DST: not ours to clean


# ------------------------------------------------------------------------------------- stale-temp cleanup

def _leftover_of_a_killed_writer(dst: Path) -> Path:
    """A real marked temp folder for `dst`, made by a child process that then died without cleaning up."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    code = ("import os, sys; from pathlib import Path; from convert.write.temp import TempFolder; "
            "t = TempFolder.create(Path(sys.argv[1])); (t.build / 'model.safetensors').write_bytes(b'half written'); "
            "print(t.path, flush=True); os._exit(0)")
    child = subprocess.run([sys.executable, "-c", code, str(dst)], env=_env(), capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    return Path(child.stdout.strip())


# The marker rules themselves (live owners, other hosts, bad markers, symlinks, look-alike names) are
# tested with the writer's temp folders in tests/test_durable_output.py; here: migrate applies them.


def test_killed_writer_temp_folder_is_cleaned_by_the_next_migrate(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, src / "a" / "m.pt")
    leftover = _leftover_of_a_killed_writer(tmp_path / "dst" / "a" / "m.pt")
    assert leftover.is_dir()
    report = migrate(src, tmp_path / "dst", jobs=1)
    assert report.summary["converted"] == 1 and not leftover.exists()


# -------------------------------------------------------------- lock, and workers dying with the driver

def test_second_migrate_is_refused_and_workers_die_with_a_killed_driver(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.pt", "b.pt", "c.pt"):
        torch.save({"w": torch.ones(2)}, src / name)
    dst, marker = tmp_path / "dst", tmp_path / "worker.pid"
    driver = subprocess.Popen([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q", "-j", "2"],
                              env=_env(**{FAULT_ENV: f"a.pt:{marker}"}), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before its worker hung"
            time.sleep(0.1)
        worker = int(marker.read_text())
        assert worker != driver.pid

        second = subprocess.run([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q"], env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"another migrate is running on {dst} (pid {driver.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert migrate_status(dst)["running_pid"] == driver.pid

        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(worker), "a pool worker kept running after its driver was killed"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    report = migrate(src, dst, jobs=1)  # the kernel released the lock with the driver
    assert report.summary["converted"] + report.summary["skipped"] == 3 and report.exit_code == 0
    assert migrate_status(dst)["running_pid"] is None


# ----------------------------------------------------------------------------- FIFOs, sockets in SRC

def test_fifo_and_socket_in_the_tree_are_skipped_without_opening_them(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, src / "sub" / "m.pt")
    os.mkfifo(src / "pipe.pt")  # named like a checkpoint: opening it would block forever
    os.mkfifo(src / "sub" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = src / "s.sock"
    try:
        sock.bind(str(sock_path))
    except OSError:  # path too long for AF_UNIX on this machine: the FIFOs still make the point
        sock_path = None
    try:
        run = subprocess.run([sys.executable, "-m", "convert", "migrate", str(src), str(tmp_path / "dst"), "-q"],
                             env=_env(), capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        special = 2 + (sock_path is not None)
        assert f"special files  {special} (FIFOs, sockets, devices: skipped, never opened)" in run.stdout, run.stdout
        doc = json.loads((tmp_path / "dst" / REPORT_NAME).read_text())
        assert doc["special_files"] == special and list(doc["files"]) == ["sub/m.pt"]
        scan = subprocess.run([sys.executable, "-m", "convert", "scan", str(src)], env=_env(),
                              capture_output=True, text=True, timeout=180)
        # scan's folder walk is migrate's: the FIFOs and the socket are skipped, only the checkpoint is read
        assert scan.returncode == 0 and scan.stdout.count("SAFE") == 1 and "m.pt" in scan.stdout, scan.stdout + scan.stderr
    finally:
        sock.close()
