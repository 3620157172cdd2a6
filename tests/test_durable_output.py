"""The output folder's own guarantees: its integrity record (folder id + digests) and the checks of it,
exclusive creation, the overwrite lock, marked temporary folders and their safe cleanup, and
environment errors (full disk, read-only, a file in place of a folder) as one clear line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest
import torch
from safetensors import safe_open

from convert import ConvertError, OutputExists, convert_checkpoint, load_checkpoint, verify_checkpoint, verify_folder
from convert.cli import main
from convert.errors import CannotWrite, CorruptFolder, DestinationBusy, MalformedCheckpoint
from convert.primitives import durable, temp
from convert.primitives.durable import rename_noreplace
from convert.primitives.lock import WriterLock
from convert.primitives.temp import TempFolder, is_temporary, remove_stale_temporaries
from convert.write import folder as folder_mod
from tests.helpers import assert_equivalent, run_python, save

SIDECAR = "checkpoint.json"


def _checkpoint(src_dir, tag: float, name: str = "ckpt.pt"):
    """A small general checkpoint whose every tensor value and a sidecar value say which one it is."""
    obj = {"which": tag, "model": {"w": torch.full((64, 8), tag), "b": torch.full((8,), tag)},
           "extra": torch.arange(5) + int(tag)}
    return save(obj, src_dir / name, "zip"), obj


def _sidecar(folder) -> dict:
    return json.loads((folder / SIDECAR).read_text())


def _entries(parent) -> list[str]:
    return sorted(os.listdir(parent))


# ------------------------------------------------------------------------------ integrity record


def test_sidecar_and_every_data_file_carry_the_folder_id_and_digests(tmp_path, src_dir):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    sidecar = _sidecar(dst)
    folder_id = sidecar["folder_id"]
    assert len(folder_id) == 32 and int(folder_id, 16) >= 0
    assert len(sidecar["files"]) == 2
    for name, info in sidecar["files"].items():
        assert info["sha256"] == hashlib.sha256((dst / name).read_bytes()).hexdigest()
        with safe_open(str(dst / name), framework="pt") as f:
            assert f.metadata() == {"format": "pt", "folder_id": folder_id, "file_name": name}
    other = tmp_path / "again"
    convert_checkpoint(src, other)
    assert _sidecar(other)["folder_id"] != folder_id  # each conversion draws its own
    assert verify_folder(dst) == []


def test_sidecar_copied_from_another_conversion_is_refused(tmp_path, src_dir):
    src_a, _ = _checkpoint(src_dir, 1.0, "a.pt")
    src_b, _ = _checkpoint(src_dir, 2.0, "b.pt")  # same keys, shapes and dtypes: only the values differ
    a, b = tmp_path / "a", tmp_path / "b"
    convert_checkpoint(src_a, a)
    convert_checkpoint(src_b, b)
    shutil.copyfile(b / SIDECAR, a / SIDECAR)
    with pytest.raises(CorruptFolder, match="another conversion"):
        load_checkpoint(a)
    problems = verify_folder(a)
    assert len(problems) == 2 and all("another conversion" in p for p in problems), problems
    assert main(["verify", str(a)]) == 3
    with pytest.raises(CorruptFolder):  # nor can it be compared with a source: it does not load
        verify_checkpoint(src_b, a)


def test_flipped_data_byte_is_caught_by_verify_and_load_verify(tmp_path, src_dir, capsys):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    path = dst / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptFolder, match=r"model\.safetensors: sha256"):
        load_checkpoint(dst, verify=True)
    with pytest.raises(CorruptFolder):
        load_checkpoint(dst, mmap=False, verify=True)
    problems = verify_folder(dst)
    assert len(problems) == 1 and problems[0].startswith("model.safetensors: sha256"), problems
    capsys.readouterr()
    assert main(["verify", str(dst)]) == 3
    out = capsys.readouterr().out
    assert "NOT intact" in out and "model.safetensors" in out
    assert verify_checkpoint(src, dst) != []  # the comparison with the source sees the changed value too


def test_intact_folder_verifies_and_loads_with_verify(tmp_path, src_dir, capsys):
    src, obj = _checkpoint(src_dir, 3.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    assert_equivalent(load_checkpoint(dst, verify=True), obj)
    assert_equivalent(load_checkpoint(dst, mmap=False, verify=True), obj)
    assert main(["verify", str(dst)]) == 0
    assert "is intact" in capsys.readouterr().out


def test_data_size_differing_from_the_record_is_refused(tmp_path, src_dir):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    sidecar = _sidecar(dst)
    sidecar["files"]["model.safetensors"]["bytes"] += 4
    (dst / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(CorruptFolder, match="records"):
        load_checkpoint(dst)


def _strip_record(dst, *, sidecar: bool, data: bool) -> None:
    """Make (part of) the folder look as written before integrity records existed."""
    doc = _sidecar(dst)
    folder_id = doc["folder_id"]
    if sidecar:
        del doc["folder_id"]
        doc.pop("integrity", None)  # the seal came later still
        for info in doc["files"].values():
            del info["sha256"]
        (dst / SIDECAR).write_text(json.dumps(doc))
    if data:
        for name in doc["files"]:
            blob = (dst / name).read_bytes()
            field = f',"folder_id":"{folder_id}"'.encode()
            assert blob.count(field) == 1
            (dst / name).write_bytes(blob.replace(field, b" " * len(field)))  # same layout, valid JSON


def test_folder_without_record_loads_but_cannot_be_verified_on_its_own(tmp_path, src_dir):
    src, obj = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    _strip_record(dst, sidecar=True, data=True)
    assert_equivalent(load_checkpoint(dst), obj)
    with pytest.raises(ConvertError, match="without digests"):
        load_checkpoint(dst, verify=True)
    with pytest.raises(ConvertError, match="without digests"):
        verify_folder(dst)
    assert verify_checkpoint(src, dst) == []


def test_sidecar_without_record_over_data_files_with_one_is_refused(tmp_path, src_dir):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    _strip_record(dst, sidecar=True, data=False)
    with pytest.raises(CorruptFolder, match="another conversion"):
        load_checkpoint(dst)


def test_unreadable_data_file_header_is_a_problem_not_a_crash(tmp_path, src_dir):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    (dst / "tensors.safetensors").write_bytes(b"\x05")
    (dst / "model.safetensors").unlink()
    problems = verify_folder(dst)
    assert len(problems) == 2, problems
    assert any("missing" in p for p in problems) and any("too short" in p for p in problems)


# ------------------------------------------------------------------------------ exclusive creation, lock


def _claim_concurrently(sources, dst) -> list[str]:
    barrier, outcomes = threading.Barrier(len(sources)), []

    def claim(src):
        barrier.wait()
        try:
            rename_noreplace(src, dst)
            outcomes.append("won")
        except FileExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=claim, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_exclusive_rename_lets_exactly_one_of_two_threads_create(tmp_path):
    for attempt in range(10):
        dst = tmp_path / f"dst{attempt}"
        sources = []
        for i in range(2):
            s = tmp_path / f"s{attempt}-{i}"
            s.mkdir()
            (s / "who").write_text(str(i))
            sources.append(s)
        assert sorted(_claim_concurrently(sources, dst)) == ["exists", "won"]
        assert (dst / "who").read_text() in ("0", "1")


def test_without_renameat2_creation_stays_exclusive_and_overwrite_still_replaces(tmp_path, src_dir, monkeypatch):
    monkeypatch.setattr(durable, "_renameat2_fn", None)
    src_a, _ = _checkpoint(src_dir, 1.0, "a.pt")
    src_b, obj_b = _checkpoint(src_dir, 2.0, "b.pt")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(a, b)
    assert b.is_dir() and a.is_dir()
    dst = tmp_path / "out"
    convert_checkpoint(src_a, dst)
    with pytest.raises(OutputExists):
        convert_checkpoint(src_b, dst)
    convert_checkpoint(src_b, dst, overwrite=True)  # the two-rename fallback
    assert_equivalent(load_checkpoint(dst, verify=True), obj_b)
    assert _entries(tmp_path) == ["a", "b", "out", "src"]


def test_destination_appearing_during_the_conversion_is_not_replaced(tmp_path, src_dir, monkeypatch):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    real_write = folder_mod._write_contents

    def write_then_someone_creates_dst(*args, **kwargs):
        real_write(*args, **kwargs)
        dst.mkdir()
        (dst / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(folder_mod, "_write_contents", write_then_someone_creates_dst)
    with pytest.raises(OutputExists, match="meanwhile"):
        convert_checkpoint(src, dst)
    assert os.listdir(dst) == ["theirs.txt"]
    assert _entries(tmp_path) == ["out", "src"]


def test_overwrite_while_another_run_holds_the_lock_is_refused(tmp_path, src_dir, capsys):
    src, _ = _checkpoint(src_dir, 1.0)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    before = (dst / SIDECAR).read_bytes()
    with WriterLock(dst):
        with pytest.raises(DestinationBusy, match="another ckpt-convert run"):
            convert_checkpoint(src, dst, overwrite=True)
        capsys.readouterr()
        assert main(["convert", str(src), str(dst), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "being written by another" in err
    assert (dst / SIDECAR).read_bytes() == before
    convert_checkpoint(src, dst, overwrite=True)
    assert _entries(tmp_path) == ["out", "src"]  # the lock file is removed on release


# ------------------------------------------------------------------------------ temporary folders


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_temp(parent, dst_name: str, pid: int, name_pid: int | None = None, token: str = "0123456789ab",
               **marker_changes) -> object:
    """A temporary folder as a run with `pid` leaves it (named with `name_pid`, if given, instead)."""
    path = parent / f".{dst_name}.ckpt-convert-tmp-{name_pid or pid}-{token}"
    (path / "new").mkdir(parents=True)
    (path / "new" / "model.safetensors").write_bytes(b"x" * 100)
    marker = temp.owner_marker(dst_name)
    marker.update(pid=pid, pid_start=temp.process_start_time(pid))
    marker.update(marker_changes)
    (path / "owner.json").write_text(json.dumps(marker))
    return path


def test_stale_temporaries_are_removed_only_with_a_valid_marker_of_a_gone_owner_or_as_a_bare_skeleton(tmp_path):
    dead = _dead_pid()
    stale = _fake_temp(tmp_path, "out", dead)
    other_dst = _fake_temp(tmp_path, "other", dead)
    live = _fake_temp(tmp_path, "out", os.getppid())
    mine = _fake_temp(tmp_path, "out", os.getpid())
    elsewhere = _fake_temp(tmp_path, "out", dead + 1 if dead + 1 != os.getpid() else dead + 2,
                           host=socket.gethostname() + "-elsewhere")
    mismatched = _fake_temp(tmp_path, "out", dead, name_pid=os.getpid(), token="fedcba987654")
    no_marker = tmp_path / f".out.ckpt-convert-tmp-{dead}-aaaaaaaaaaaa"
    (no_marker / "new").mkdir(parents=True)
    bad_marker = tmp_path / f".out.ckpt-convert-tmp-{dead}-bbbbbbbbbbbb"
    bad_marker.mkdir()
    (bad_marker / "owner.json").write_text("{not json")
    old_style = tmp_path / ".backup.old-2023"  # what the pattern-based cleanup of old versions deleted
    (old_style / "keep").mkdir(parents=True)
    target = tmp_path / "precious"
    target.mkdir()
    _fake_temp(target, "x", dead)
    link = tmp_path / f".out.ckpt-convert-tmp-{dead}-cccccccccccc"
    link.symlink_to(target / f".x.ckpt-convert-tmp-{dead}-0123456789ab")

    # a run killed inside TempFolder.create leaves its bare skeleton: no marker yet, or one cut short
    cut_short = tmp_path / f".out.ckpt-convert-tmp-{dead}-dddddddddddd"
    cut_short.mkdir()
    (cut_short / "owner.json").write_bytes(json.dumps(temp.owner_marker("out")).encode()[:13])
    skeleton_of_live = tmp_path / f".out.ckpt-convert-tmp-{os.getppid()}-eeeeeeeeeeee"
    skeleton_of_live.mkdir()
    bare = tmp_path / f".out.ckpt-convert-tmp-{dead}-abababababab"
    bare.mkdir()
    with_a_file = tmp_path / f".out.ckpt-convert-tmp-{dead}-ffffffffffff"
    (with_a_file / "new").mkdir(parents=True)
    (with_a_file / "new" / "notes.txt").write_text("someone's")

    assert set(remove_stale_temporaries(tmp_path, "out")) == {stale, bare, cut_short}
    assert remove_stale_temporaries(tmp_path) == [other_dst]
    for kept in (live, mine, elsewhere, mismatched, no_marker, bad_marker, old_style / "keep", link, skeleton_of_live,
                 with_a_file / "new" / "notes.txt", target / f".x.ckpt-convert-tmp-{dead}-0123456789ab"):
        assert os.path.lexists(kept), kept
    assert is_temporary(stale) and not is_temporary(old_style)


def test_reused_pid_of_another_process_counts_as_gone(tmp_path):
    live_parent = os.getppid()
    reused = _fake_temp(tmp_path, "out", live_parent, pid_start="1")  # the pid runs, but started at another time
    assert remove_stale_temporaries(tmp_path, "out") == [reused]


def test_conversion_removes_its_own_stale_temporaries_first(tmp_path, src_dir):
    src, _ = _checkpoint(src_dir, 1.0)
    dead = _dead_pid()
    stale = _fake_temp(tmp_path, "out", dead)
    foreign = _fake_temp(tmp_path, "another", dead)
    convert_checkpoint(src, tmp_path / "out")
    assert not stale.exists() and foreign.exists()


def test_temp_folder_is_marked_and_holds_the_build(tmp_path):
    t = TempFolder.create(tmp_path / "out")
    marker = json.loads((t.path / "owner.json").read_text())
    assert marker["pid"] == os.getpid() and marker["destination"] == "out" and marker["tool"] == "ckpt-convert"
    assert t.build.is_dir() and is_temporary(t.path)
    assert remove_stale_temporaries(tmp_path) == []  # ours, alive
    t.remove()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ environment errors


def test_file_in_place_of_a_parent_folder_is_one_line_cannot_write(tmp_path, src_dir, capsys):
    src, _ = _checkpoint(src_dir, 1.0)
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert main(["convert", str(src), str(tmp_path / "blocker" / "sub" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckpt-convert: error: cannot write ") and "Not a directory" in err, err
    assert len(err.splitlines()) == 1
    assert _entries(tmp_path) == ["blocker", "src"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_environment_errors_while_writing_leave_nothing_behind(tmp_path, src_dir, monkeypatch, code):
    src, _ = _checkpoint(src_dir, 1.0)
    real = folder_mod.write_safetensors
    calls = []

    def fail_on_second_file(out, entries, metadata, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            out.write(b"partial")
            raise OSError(code, os.strerror(code))
        real(out, entries, metadata, **kwargs)

    monkeypatch.setattr(folder_mod, "write_safetensors", fail_on_second_file)
    dst = tmp_path / "deep" / "out"
    with pytest.raises(CannotWrite) as info:
        convert_checkpoint(src, dst)
    assert str(info.value) == f"cannot write {dst}: {os.strerror(code)}"
    assert info.value.exit_code == 2
    assert _entries(tmp_path) == ["src"]  # no temp folder, and the parent this run created is gone too


def test_environment_error_during_overwrite_keeps_the_old_folder(tmp_path, src_dir, monkeypatch):
    src_a, obj_a = _checkpoint(src_dir, 1.0, "a.pt")
    src_b, _ = _checkpoint(src_dir, 2.0, "b.pt")
    dst = tmp_path / "out"
    convert_checkpoint(src_a, dst)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(folder_mod, "write_durable", no_space)
    with pytest.raises(CannotWrite, match="No space left on device"):
        convert_checkpoint(src_b, dst, overwrite=True)
    assert_equivalent(load_checkpoint(dst, verify=True), obj_a)
    assert _entries(tmp_path) == ["out", "src"]


FSIZE_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from convert.cli import main
sys.exit(main(["convert", sys.argv[1], sys.argv[2]]))
"""


def test_file_size_limit_is_reported_as_cannot_write_with_nothing_left(tmp_path, src_dir):
    src = save({"w": torch.randn(256, 1024)}, src_dir / "big.pt", "zip")  # 1 MiB of data
    proc = run_python(FSIZE_SCRIPT, src, tmp_path / "out", 256 << 10, pythonpath=[os.getcwd()])
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err == f"ckpt-convert: error: cannot write {tmp_path / 'out'}: File too large", err
    assert _entries(tmp_path) == ["src"]


def test_environment_oserror_anywhere_is_not_an_internal_error(tmp_path, capsys, monkeypatch):
    def unreadable(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "x"))

    monkeypatch.setattr("convert.cli.commands.inspect", unreadable)
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ckpt-convert: error: {tmp_path / 'x'}: Permission denied", err


def test_malformed_folder_is_still_malformed_not_cannot_write(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / SIDECAR).write_text("{}")
    with pytest.raises(MalformedCheckpoint):
        verify_folder(tmp_path / "f")

