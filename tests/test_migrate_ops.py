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


# ------------------------------------------------------------------ retries that find their output installed

from convert.migrate.journal import JOURNAL_NAME  # noqa: E402
from convert.migrate.walker import find_jobs  # noqa: E402
from convert.migrate.worker import pool_job  # noqa: E402
from convert.primitives.hashing import sha256_path  # noqa: E402


def _hf_folder(folder: Path, value: float = 1.0) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    torch.save({"emb.weight": torch.full((4, 2), value)}, folder / "pytorch_model.bin")


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` with its inode: a folder converted again would have new ones."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def retry_tree(tmp_path) -> Path:
    src = tmp_path / "src"
    _sources(src)
    _hf_folder(src / "bert")
    return src


def test_a_retried_job_adopts_the_output_its_earlier_attempt_installed(retry_tree, tmp_path):
    dst = tmp_path / "dst"
    jobs = {job.rel: job for job in find_jobs(retry_tree)[0]}
    assert jobs["bert"].kind == "hf" and jobs["a.pt"].kind == "file"
    for rel in ("a.pt", "bert"):
        first = pool_job(jobs[rel], str(dst))  # the attempt that installed the output, then "died"
        assert first["status"] == "converted" and first["verified"], first
        installed = _snapshot(dst / rel)
        again = pool_job(jobs[rel], str(dst))  # the retry: same job, output already there
        assert again["status"] == "converted" and again["verified"] and again.get("adopted"), again
        assert _snapshot(dst / rel) == installed, "the retry converted again instead of adopting"
        assert {k: again[k] for k in ("tensors", "files", "output_bytes")} == \
            {k: first[k] for k in ("tensors", "files", "output_bytes")}
    assert again["kind"] == "hf" and pool_job(jobs["a.pt"], str(dst))["sha256"] == sha256_path(retry_tree / "a.pt")


def test_a_retry_does_not_adopt_another_sources_output(retry_tree, tmp_path):
    """An output converted from another unit (or damaged) is not this job's: the job fails, nothing touched."""
    dst, other = tmp_path / "dst", tmp_path / "other"
    _hf_folder(other / "bert", value=7.0)
    pool_job(find_jobs(other)[0][0], str(dst))  # DST/bert now holds the conversion of a different folder
    before = _snapshot(dst / "bert")
    job = {j.rel: j for j in find_jobs(retry_tree)[0]}["bert"]
    entry = pool_job(job, str(dst))
    assert entry["status"] == "failed" and "was not written by this migration" in entry["reason"], entry
    assert _snapshot(dst / "bert") == before


def test_a_unit_output_whose_journal_line_was_lost_is_adopted_not_refused(retry_tree, tmp_path):
    dst = tmp_path / "dst"
    assert migrate(retry_tree, dst, jobs=1).exit_code == 0
    installed = _snapshot(dst / "bert")
    (dst / JOURNAL_NAME).unlink()  # e.g. a kill before the unsynced "started" line reached the disk
    report = migrate(retry_tree, dst, jobs=1)
    assert report.exit_code == 0 and report.files["bert"]["status"] == "converted", report.files["bert"]
    assert report.files["bert"].get("adopted") and _snapshot(dst / "bert") == installed
    assert read_journal(dst).entries["bert"]["owner"] is True
    assert migrate(retry_tree, dst, jobs=1).files["bert"]["status"] == "skipped"


# ------------------------------------------------------------------ --sign-key over outputs of earlier runs

from tests.helpers import key_pair, run_cli  # noqa: E402

SIGNATURE = "model.sig"


def _signatures(dst: Path, outputs) -> dict[str, tuple[int, int]]:
    return {o: ((dst / o / SIGNATURE).stat().st_ino, (dst / o / SIGNATURE).stat().st_mtime_ns)
            for o in outputs if (dst / o / SIGNATURE).exists()}


def test_a_rerun_with_a_sign_key_signs_the_outputs_earlier_runs_left_unsigned(retry_tree, tmp_path):
    pytest.importorskip("model_signing", reason="signing needs the sign extra")
    private, public = key_pair(tmp_path, "ours")
    other, _ = key_pair(tmp_path, "other")
    dst = tmp_path / "dst"
    outputs = [*NAMES, "bert"]
    assert migrate(retry_tree, dst, jobs=1).exit_code == 0
    assert not _signatures(dst, outputs)
    assert run_cli("sign", dst / "a.pt", "--private-key", other).returncode == 0  # signed, by another key

    cli = run_cli("migrate", retry_tree, dst, "-q", "-j", "2", "--sign-key", private, timeout=600)
    assert cli.returncode == 0, cli.stderr
    assert f"signed {len(outputs)} earlier output(s)" in cli.stdout, cli.stdout
    for out in outputs:
        verified = run_cli("verify", dst / out, "--public-key", public)
        assert verified.returncode == 0, (out, verified.stdout, verified.stderr)
    assert not [p for p in dst.rglob(".model.sig.partial")]
    signed = _signatures(dst, outputs)

    again = migrate(retry_tree, dst, jobs=2, sign_key=private)  # nothing new: no output signed or converted again
    assert again.signed_earlier == 0 and set(again.summary) >= {"skipped"} and again.summary["skipped"] == len(outputs)
    assert not any(e.get("signed_now") for e in again.files.values())
    assert _signatures(dst, outputs) == signed

    new = retry_tree / "e.pt"  # a new file in the same run is signed as it is written
    torch.save({"w": torch.ones(2)}, new)
    (dst / "b.pt" / SIGNATURE).unlink()  # an output whose signature went missing is signed again
    third = migrate(retry_tree, dst, jobs=1, sign_key=private)
    assert third.files["e.pt"]["status"] == "converted" and third.signed_earlier == 1, third.files
    assert all(run_cli("verify", dst / out, "--public-key", public).returncode == 0 for out in ("e.pt", "b.pt"))


def test_a_damaged_earlier_output_is_not_signed(retry_tree, tmp_path):
    pytest.importorskip("model_signing", reason="signing needs the sign extra")
    private, _ = key_pair(tmp_path, "ours")
    dst = tmp_path / "dst"
    migrate(retry_tree, dst, jobs=1)
    data = next((dst / "a.pt").glob("*.safetensors"))
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = migrate(retry_tree, dst, jobs=1, sign_key=private)
    assert report.files["a.pt"]["status"] == "failed" and "damaged" in report.files["a.pt"]["reason"]
    assert not (dst / "a.pt" / SIGNATURE).exists() and report.signed_earlier == len(NAMES)  # the others: signed
    fixed = migrate(retry_tree, dst, jobs=1, sign_key=private)  # converted again (it is ours), signed as written
    assert fixed.files["a.pt"]["status"] == "converted" and (dst / "a.pt" / SIGNATURE).exists()
    assert verify_folder(dst / "a.pt").ok


# ------------------------------------------------------------------ a worker killed between mkdir and its marker

from convert.primitives.temp import remove_stale_temporaries  # noqa: E402


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_temp_folder_killed_before_its_marker_is_removed_only_when_it_is_surely_that(tmp_path):
    out = tmp_path / "dst" / "a.pt"
    out.parent.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    unmarked = out.parent / f".a.pt.ckpt-convert-tmp-{dead}-0123456789ab"
    unmarked.mkdir()
    (unmarked / "owner.json").write_bytes(b'{"tool": "ckpt-con')  # cut short by the kill
    empty = out.parent / f".a.pt.ckpt-convert-tmp-{dead}-ba9876543210"
    empty.mkdir()
    kept = [out.parent / f".a.pt.ckpt-convert-tmp-{alive}-0123456789ab",  # its process lives
            out.parent / f".a.pt.ckpt-convert-tmp-{dead}-00000000000a",  # a build was started: not create's leftover
            out.parent / f".b.pt.ckpt-convert-tmp-{dead}-0123456789ab",  # another output's
            out.parent / f".a.pt.ckpt-convert-tmp-{dead}-0000000000"]  # not the writer's name
    for folder in kept:
        folder.mkdir()
    (kept[1] / "new").mkdir()
    assert sorted(remove_stale_temporaries(out.parent, out.name)) == sorted([unmarked, empty])
    assert all(folder.is_dir() for folder in kept)


def test_the_rerun_removes_what_a_worker_killed_mid_start_left(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _sources(src)
    migrate(src, dst, jobs=1)
    lines = (dst / JOURNAL_NAME).read_text().splitlines()
    lines = [ln for ln in lines if '"rel":"a.pt"' not in ln] + \
        ['{"rel":"a.pt","status":"interrupted","output":"a.pt","owner":true,"reason":"stopped"}']
    (dst / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    left = dst / f".a.pt.ckpt-convert-tmp-{_dead_pid()}-0123456789ab"
    left.mkdir()
    report = migrate(src, dst, jobs=1)
    assert report.files["a.pt"]["status"] == "converted" and not left.exists()
    assert not stale_temporaries(dst)


# ------------------------------------------------------------------ a job's unexpected failure, in its own words

@pytest.mark.parametrize("raised, expected", [
    (MemoryError(), "error: out of memory; free some memory or raise the limit (ulimit -v) and retry"),
    (OSError(24, "Too many open files", "/d/a.pt"), "error: /d/a.pt: Too many open files"),
    (ValueError("a bug"), "internal error: ValueError: a bug"),
])
def test_a_jobs_memory_or_environment_failure_is_not_called_an_internal_error(retry_tree, tmp_path, monkeypatch,
                                                                              raised, expected):
    import convert.migrate.worker as worker

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(worker, "convert_checkpoint", fail)
    job = {job.rel: job for job in find_jobs(retry_tree)[0]}["a.pt"]
    entry = pool_job(job, str(tmp_path / "dst"))
    assert (entry["status"], entry["reason"]) == ("failed", expected)


@pytest.mark.parametrize("status", [False, True])
def test_a_fifo_in_place_of_the_journal_is_one_line_not_a_hang(tmp_path, status):
    from tests.helpers import assert_one_line_error

    src, dst = tmp_path / "src", tmp_path / "dst"
    _sources(src)
    dst.mkdir()
    os.mkfifo(dst / JOURNAL_NAME)
    proc = run_cli("migrate", "--status", str(dst)) if status else run_cli("migrate", str(src), str(dst))
    assert_one_line_error(proc)
    assert "not a regular file" in proc.stderr and JOURNAL_NAME in proc.stderr
