"""Clean ends (issue 20): SIGTERM as Ctrl-C, temp names within NAME_MAX, bounded descriptors on load,
one line for MemoryError / EMFILE / EBUSY, and a closed stdout after success is not an error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convert import convert_checkpoint, load_checkpoint, save_checkpoint
from convert.ops.verify import verify_folder
from tests.helpers import REPO_ROOT, assert_one_line_error, folder_snapshot, run_cli, run_python, save


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def _wait_stopped(proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the run never reached its stop point")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("overwrite", [False, True])
def test_sigterm_cleans_up_like_ctrl_c(tmp_path, src_dir, overwrite):
    src = save({"w": torch.randn(64, 64)}, src_dir / "a.pt", "zip")
    out = tmp_path / "out"
    if overwrite:
        convert_checkpoint(save({"v": torch.ones(3)}, src_dir / "old.pt", "zip"), out)
    before = folder_snapshot(out) if overwrite else None
    args = [sys.executable, "-m", "convert", "convert", src, out] + (["--overwrite"] if overwrite else [])
    proc = subprocess.Popen(args, env=_env(CKPT_CONVERT_FAULT="before-rename:stop"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_stopped(proc)  # the new folder is complete in its temporary folder (and the lock held, with overwrite)
    assert any(".ckpt-convert-tmp-" in n for n in os.listdir(tmp_path))
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "ckpt-convert: terminated"
    assert sorted(os.listdir(tmp_path)) == (["out", "src"] if overwrite else ["src"])  # no temp folder, no lock
    if overwrite:
        assert folder_snapshot(out) == before


@pytest.mark.parametrize("length", [200, 240, 255])
def test_long_destination_names_fit(tmp_path, src_dir, length):
    src = save({"w": torch.randn(4, 4)}, src_dir / "a.pt", "zip")
    out = tmp_path / ("d" * (length - 4) + "é.ck")  # multi-byte: the limit is in bytes
    out = out.with_name(os.fsdecode(os.fsencode(out.name)[:length]))
    proc = run_cli("convert", src, out)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("convert", src, out, "--overwrite")  # lock and temp names beside it fit too
    assert proc.returncode == 0, proc.stderr
    assert verify_folder(out) == []
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, "src"])


def test_cut_temporary_names_are_still_cleaned_up(tmp_path):
    from convert.primitives.temp import TempFolder, remove_stale_temporaries

    dst = tmp_path / ("x" * 250)
    temp = TempFolder.create(dst)
    assert len(os.fsencode(temp.path.name)) <= 255
    marker = (temp.path / "owner.json").read_text()
    (temp.path / "owner.json").write_text(marker.replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    stale = temp.path.with_name(temp.path.name.replace(f"-{os.getpid()}-", "-999999999-"))
    temp.path.rename(stale)
    assert remove_stale_temporaries(tmp_path, dst.name) == [stale]


FD_LIMITED_LOAD = r"""
import resource, sys, torch
from convert import load_checkpoint
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
folder = sys.argv[1]
for kwargs in ({"mmap": False}, {"mmap": True}, {"verify": True}, {"mmap": False, "verify": True}):
    ck = load_checkpoint(folder, **kwargs)
    assert len(ck) == 200 and all(torch.equal(ck[f"t{i}"], torch.full((64,), float(i))) for i in range(200)), kwargs
print("ok")
"""


def test_load_holds_a_bounded_number_of_descriptors(tmp_path):
    folder = tmp_path / "many"
    save_checkpoint({f"t{i}": torch.full((64,), float(i)) for i in range(200)}, folder, max_shard_size=256)
    assert len(list(folder.glob("*.safetensors"))) >= 150
    proc = run_python(FD_LIMITED_LOAD, folder, pythonpath=[REPO_ROOT])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_a_closed_stdout_after_success_is_silent(tmp_path, src_dir):
    src = save({f"k{i}": torch.randn(2) for i in range(300)}, src_dir / "a.pt", "zip")
    convert_checkpoint(src, tmp_path / "out")
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    try:
        proc = subprocess.run([sys.executable, "-m", "convert", "inspect", tmp_path / "out"], env=_env(),
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


RAISING = r"""
import errno, sys
from convert.cli import commands, main
def boom(args):
    raise {exc}
commands.verify = boom
open("x.pt", "wb").close()  # real arguments: the argument checks pass, the command itself fails
__import__("os").mkdir("y")
sys.exit(main(["verify", "x.pt", "y"]))
"""


@pytest.mark.parametrize("exc, words", [
    ("MemoryError()", "out of memory"),
    ("OSError(errno.EMFILE, 'Too many open files')", "Too many open files"),
    ("OSError(errno.EBUSY, 'Device or resource busy', '/mnt')", "busy"),
])
def test_resource_errors_are_one_line(tmp_path, exc, words):
    proc = run_python(RAISING.replace("{exc}", exc), cwd=tmp_path, pythonpath=[REPO_ROOT])
    assert_one_line_error(proc, 2)
    assert words in proc.stderr and "internal error" not in proc.stderr


def test_load_of_a_folder_replaced_meanwhile_still_works_after_close(tmp_path):
    """mmap=True keeps no descriptor: the mapping alone serves the tensors."""
    folder = tmp_path / "f"
    save_checkpoint({"w": torch.arange(10.0)}, folder)
    ck = load_checkpoint(folder)
    assert not any(os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
                   for fd in map(int, os.listdir("/proc/self/fd")) if _is_link(fd))
    assert torch.equal(ck["w"], torch.arange(10.0))


def _is_link(fd: int) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
        return True
    except OSError:
        return False


def test_mapped_tensors_outlive_the_loader(tmp_path):
    """The fd-less mapping is unmapped only with the last view of it: tensors and arrays stay valid."""
    import gc

    import numpy as np

    folder = tmp_path / "f"
    save_checkpoint({"w": torch.arange(1000.0), "a": np.arange(50, dtype=np.int64)}, folder, max_shard_size=2048)
    ck = load_checkpoint(folder)
    gc.collect()
    assert torch.equal(ck["w"], torch.arange(1000.0))
    assert np.array_equal(ck["a"], np.arange(50))
    ck["w"] += 1  # copy-on-write: the file is not touched
    assert torch.equal(load_checkpoint(folder)["w"], torch.arange(1000.0))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_to_a_folder_scan_ends_it_and_its_workers_in_one_line(tmp_path, src_dir, sig, code, word):
    # scan's forked pool workers share the CLI's process group, as under a terminal's Ctrl-C
    one = save({"w": torch.randn(8)}, src_dir / "one.pt", "zip")
    for i in range(4000):  # enough that the scan is still running when the signal comes
        os.link(one, src_dir / f"c{i:04d}.pt")
    proc = subprocess.Popen([sys.executable, "-m", "convert", "scan", "-q", src_dir], env=_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children, workers, deadline = Path(f"/proc/{proc.pid}/task/{proc.pid}/children"), [], time.monotonic() + 60
    while not workers and time.monotonic() < deadline and proc.poll() is None:  # signal once the pool runs
        workers = [int(p) for p in children.read_text().split()] if children.exists() else []
        time.sleep(0.01)
    assert workers and proc.poll() is None, "the scan never started its workers"
    time.sleep(0.1)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip() == f"ckpt-convert: {word}", err
    time.sleep(0.5)
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
               for pid in workers)  # no worker left running
