"""An operator's hostile-but-realistic uses of the CLI and the API, each a break found by probing.

Every outcome must be a correct result, or the documented exit code with one line on stderr (no
traceback, no exit 70 for the user's own environment, no hang), nothing partial left, the source untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convert import ConvertError, convert_checkpoint
from tests.helpers import REPO_ROOT, assert_one_line_error, folder_snapshot, run_cli, save


def _hf_folder(root: Path) -> Path:
    hf = root / "bert"
    hf.mkdir()
    save({"w": torch.randn(4, 4), "b": torch.randn(4)}, hf / "pytorch_model.bin", "zip")
    (hf / "config.json").write_text('{"model_type": "bert"}')
    return hf


def _trainer_folder(root: Path) -> Path:
    ck = root / "checkpoint-500"
    ck.mkdir()
    save({"w": torch.randn(4, 4)}, ck / "optimizer.pt", "zip")
    (ck / "trainer_state.json").write_text("{}")
    return ck


@pytest.mark.parametrize("make", [_hf_folder, _trainer_folder])
@pytest.mark.parametrize("inside", ["out", "sub/out"])
def test_output_inside_a_source_folder_is_refused_at_once(tmp_path, make, inside):
    """`convert bert bert/out` used to copy its own temporary folder into itself, level after level (each
    level a copy of the whole model), until the path overflowed: 'File name too long'. Now one line, nothing written."""
    src = make(tmp_path)
    before = folder_snapshot(src)
    proc = run_cli("convert", src, src / inside, cwd=tmp_path)
    assert_one_line_error(proc, 2)
    assert "inside the source folder" in proc.stderr and "too long" not in proc.stderr, proc.stderr
    assert folder_snapshot(src) == before  # nothing created under the source, not even a parent folder
    with pytest.raises(ConvertError, match="inside the source folder"):
        convert_checkpoint(src, src / inside)
    assert folder_snapshot(src) == before


def test_migrate_of_a_unit_into_itself_says_why(tmp_path):
    """`migrate bert bert/out` (bert an HF folder): the one unit job writes under its own source; it failed with
    'File name too long' after copying the model over and over. The job now fails at once, saying why."""
    src = _hf_folder(tmp_path)
    proc = run_cli("migrate", src, src / "out", "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "inside the source folder" in proc.stdout and "too long" not in proc.stdout, proc.stdout
    assert not [p for p in (src / "out").rglob("*") if p.is_dir()]  # no output folder, no level of copies


def _cli_with_closed_stdout(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))


def test_closed_stdout_is_not_a_traceback(tmp_path, src_dir):
    """`ckpt-convert convert a.pt out >&-` (stdout closed, as cron or a daemon may run it): Python then has no
    sys.stdout, and the run ended in an AttributeError traceback, exit 1 (which reads as 'unsafe')."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    proc = _cli_with_closed_stdout("convert", src, tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert (tmp_path / "out" / "checkpoint.json").is_file()
    proc = _cli_with_closed_stdout("verify", tmp_path / "out", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = _cli_with_closed_stdout("convert", src_dir / "missing.pt", tmp_path / "out2", cwd=tmp_path)
    assert_one_line_error(proc, 2)


def _cli_under_address_limit(mib: int, *args, cwd) -> subprocess.CompletedProcess:
    import resource

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    env.pop("OPENBLAS_NUM_THREADS", None)
    limit = mib * 1024 * 1024
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))


@pytest.mark.parametrize("mib", [64, 100])
def test_tiny_address_space_limit_is_one_line(tmp_path, src_dir, mib):
    """`ulimit -v 60000; ckpt-convert convert ...`: numpy's import failed ('internal error: ImportError', exit 70),
    or OpenBLAS's own allocation failed and it ended the process with exit 1 (which reads as 'unsafe')."""
    src = save({"w": torch.randn(8, 8)}, src_dir / "a.pt", "zip")
    proc = _cli_under_address_limit(mib, "convert", src, tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(proc, 2)
    assert "memory" in proc.stderr and "ulimit -v" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["convert", "verify"])
def test_low_address_space_limit_converts_or_says_out_of_memory(tmp_path, src_dir, command):
    """Just above the start-up floor: a conversion (no BLAS math: OpenBLAS is held to one thread's buffer) works,
    and `verify SRC OUT`, whose torch import cannot map libtorch, says out of memory (it said 'internal error')."""
    src = save({"w": torch.randn(8, 8)}, src_dir / "a.pt", "zip")
    out = tmp_path / "out"
    if command == "verify":
        convert_checkpoint(src, out)
    args = ("convert", src, out) if command == "convert" else ("verify", src, out)
    proc = _cli_under_address_limit(170 if command == "convert" else 300, *args, cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    if command == "convert":
        assert proc.returncode == 0, proc.stderr
    elif proc.returncode != 0:
        assert_one_line_error(proc, 2)
        assert "out of memory" in proc.stderr, proc.stderr


def test_two_data_files_of_one_folder_swapped_are_refused_by_a_plain_load(tmp_path, src_dir):
    """model_state_dict.safetensors and ema_state_dict.safetensors (same keys, same sizes) renamed into each other:
    both carry the folder's id and the recorded size, so the default load (verify=False) gave the EMA weights as the
    model's, silently. Each data file's header now names the file it was written as."""
    from convert import CorruptFolder, load_checkpoint, verify_folder

    torch.manual_seed(0)
    ck = {"model_state_dict": {"w": torch.randn(4, 4)}, "ema_state_dict": {"w": torch.randn(4, 4)}}
    src = save(ck, src_dir / "two.pt", "zip")
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    a, b = out / "model_state_dict.safetensors", out / "ema_state_dict.safetensors"
    a.rename(tmp_path / "moved")
    b.rename(a)
    (tmp_path / "moved").rename(b)
    with pytest.raises(CorruptFolder, match="was written as"):
        load_checkpoint(out, map_location="cpu")
    assert not verify_folder(out)
    proc = run_cli("verify", out)
    assert proc.returncode == 3 and "was written as" in proc.stdout, proc.stdout


def test_many_shards_convert_under_a_low_descriptor_limit(tmp_path, src_dir):
    """`convert --max-shard-size` into hundreds of shards: each written shard kept a descriptor open until the
    helper thread had hashed and fsync'd it, so a fast writer ran out ('Too many open files' at ulimit -n 1024 with
    1500 shards). Now at most a few wait at once."""
    src = save({f"w{i}": torch.full((16,), float(i)) for i in range(300)}, src_dir / "many.pt", "zip")
    out = tmp_path / "out"
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)); "
              "from convert import convert_checkpoint; convert_checkpoint(sys.argv[1], sys.argv[2], max_shard_size=100)")
    proc = subprocess.run([sys.executable, "-c", script, str(src), str(out)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("model-*.safetensors"))) == 300
    assert run_cli("verify", src, out).returncode == 0


def test_summary_line_of_a_many_shard_convert_stays_short(tmp_path, src_dir):
    src = save({f"w{i}": torch.full((16,), float(i)) for i in range(40)}, src_dir / "many.pt", "zip")
    proc = run_cli("convert", src, tmp_path / "out", "--max-shard-size", "100")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "and 34 more files" in first and len(first) < 600, first


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink_out"])
def test_a_data_or_copied_file_that_is_not_a_plain_file_is_named_as_such(tmp_path, kind):
    """A data file replaced by a FIFO or a folder, a copied config.json by a symlink out of the folder: `verify FOLDER`
    and the load said 'is missing' (the file is there); now what it is. Never a hang on the FIFO."""
    from convert import load_checkpoint

    src = _hf_folder(tmp_path)
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    victim = out / ("config.json" if kind == "symlink_out" else "model.safetensors")
    victim.unlink()
    if kind == "fifo":
        os.mkfifo(victim)
    elif kind == "folder":
        victim.mkdir()
    else:
        (tmp_path / "mine.json").write_text("{}")
        victim.symlink_to(tmp_path / "mine.json")
    expected = {"fifo": "is a FIFO (named pipe), not a regular file", "folder": "is a folder, not a regular file",
                "symlink_out": "resolves outside the folder"}[kind]
    proc = run_cli("verify", out, timeout=60)
    assert proc.returncode == 3 and expected in proc.stdout and "missing" not in proc.stdout, proc.stdout
    if kind != "symlink_out":
        with pytest.raises(ConvertError, match="not a regular file"):
            load_checkpoint(out, map_location="cpu")


@pytest.mark.parametrize("target", ["scanned", "other_checkpoint", "scanned_via_symlink"])
def test_scan_report_never_overwrites_a_checkpoint(tmp_path, src_dir, target):
    """`scan a.pt -o a.pt` (a slip of the fingers, or a script's variable) replaced the checkpoint with its own
    report, exit 0: the source was written. The report may not replace a scanned file nor any checkpoint."""
    a = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    b = save({"w": torch.randn(3)}, src_dir / "b.pt", "zip")
    out = {"scanned": a, "other_checkpoint": b, "scanned_via_symlink": tmp_path / "report.json"}[target]
    if target == "scanned_via_symlink":
        out.symlink_to(a)
    before = {p: p.read_bytes() for p in (a, b)}
    proc = run_cli("scan", a, "-o", out, "--format", "json")
    assert_one_line_error(proc, 2)
    assert "checkpoint" in proc.stderr and "report" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in (a, b)} == before
    report = tmp_path / "r.json"  # an earlier report is replaced as before
    report.write_text("old")
    assert run_cli("scan", a, "-o", report, "--format", "json").returncode == 0
    assert report.read_text().startswith("{")


@pytest.mark.parametrize("target", ["output", "empty", "dangling"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_symlink_destination_is_named_as_one(tmp_path, src_dir, target, overwrite):
    """DST a symlink (to an earlier output, an empty folder, nowhere): refused, untouched, and said so. It used to
    suggest --overwrite, which then said 'exists and is not a folder' of what is (a link to) a folder."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    real = tmp_path / "real"
    if target == "output":
        convert_checkpoint(src, real)
    elif target == "empty":
        real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    before = folder_snapshot(real) if real.exists() else None
    proc = run_cli("convert", src, link, *(["--overwrite"] if overwrite else []))
    assert_one_line_error(proc, 2)
    assert "is a symbolic link" in proc.stderr and "--overwrite" not in proc.stderr, proc.stderr
    assert link.is_symlink() and (folder_snapshot(real) if real.exists() else None) == before
    with pytest.raises(ConvertError, match="symbolic link"):
        convert_checkpoint(src, link, overwrite=overwrite)


def test_verify_src_dst_reports_an_edited_checkpoint_json(tmp_path, src_dir):
    """An edit of checkpoint.json that leaves the tree as it was (the recorded source name): `verify FOLDER` said
    NOT intact (the seal) while `verify SRC DST` said equivalent, exit 0. Both now say the sidecar was changed."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    sidecar = out / "checkpoint.json"
    raw = sidecar.read_text()
    assert '"name":"a.pt"' in raw
    sidecar.write_text(raw.replace('"name":"a.pt"', '"name":"b.pt"'))
    proc = run_cli("verify", src, out)
    assert proc.returncode == 3 and "checkpoint.json was changed" in proc.stdout, (proc.stdout, proc.stderr)
    from convert import verify_checkpoint

    assert any("checkpoint.json was changed" in d for d in verify_checkpoint(src, out))


@pytest.mark.parametrize("command", ["convert", "convert-overwrite", "scan", "migrate"])
def test_a_deleted_current_folder_is_one_line(tmp_path, src_dir, command):
    """A shell left in a folder that was removed meanwhile: 'internal error: FileNotFoundError', exit 70."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    gone = tmp_path / "gone"
    gone.mkdir()
    args = {"convert": ["convert", src, tmp_path / "new"], "convert-overwrite": ["convert", src, out, "--overwrite"],
            "scan": ["scan", src_dir], "migrate": ["migrate", src_dir, tmp_path / "mig"]}[command]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "convert", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: (os.chdir(gone), os.rmdir(gone)))
    assert_one_line_error(proc, 2)
    assert "current folder" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "mig").exists()


def test_api_overwrite_with_a_deleted_current_folder(tmp_path, src_dir, monkeypatch):
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    convert_checkpoint(src, out, overwrite=True)  # absolute paths: no need of the current folder
    assert (out / "checkpoint.json").is_file()


@pytest.mark.parametrize("command", ["convert", "export"])
def test_no_overwrite_hint_where_overwrite_would_be_refused(tmp_path, src_dir, command):
    """`convert a.pt myproject` (a folder of the user's files) and `export a.pt theirs.safetensors` (a file export
    did not write) said 'already exists; pass --overwrite', which then refused: the refusal is said at once."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    if command == "convert":
        dst = tmp_path / "myproject"
        dst.mkdir()
        (dst / "notes.txt").write_text("mine")
    else:
        dst = tmp_path / "theirs.safetensors"
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(dst))
    before = folder_snapshot(tmp_path)
    proc = run_cli(command, src, dst)
    assert_one_line_error(proc, 2)
    assert "--overwrite" not in proc.stderr and "refusing to replace it" in proc.stderr, proc.stderr
    assert folder_snapshot(tmp_path) == before
    empty = tmp_path / "empty"  # what --overwrite would replace: the hint stays
    empty.mkdir()
    if command == "convert":
        proc = run_cli("convert", src, empty)
        assert_one_line_error(proc, 2)
        assert "pass --overwrite" in proc.stderr, proc.stderr


def test_a_fifo_in_a_leftover_temporary_folder_does_not_hang(tmp_path, src_dir):
    """A leftover `.out.ckpt-convert-tmp-PID-RANDOM/owner.json` that is a FIFO (the cleanup reads every leftover's
    marker): the next convert to `out` blocked forever in open(). Now the leftover is not ours and is left alone."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    leftover = tmp_path / ".out.ckpt-convert-tmp-999999-abcdef123456"
    leftover.mkdir()
    os.mkfifo(leftover / "owner.json")
    proc = run_cli("convert", src, tmp_path / "out", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (leftover / "owner.json").exists()


def test_a_fifo_as_migrate_lock_does_not_hang(tmp_path, src_dir):
    save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    dst = tmp_path / "dst"
    dst.mkdir()
    os.mkfifo(dst / ".ckpt-convert.lock")
    proc = run_cli("migrate", "--status", dst, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["verify", "inspect", "convert", "export"])
def test_a_sidecar_given_for_its_folder_names_the_folder(tmp_path, src_dir, command):
    """`verify out/checkpoint.json` said 'is a checkpoint file ... verify out/checkpoint.json OUT'; inspect/convert
    said 'unknown pickle opcode 0x7b'. Now: it is the sidecar of `out`, and the command to run on the folder."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    extra = {"convert": [tmp_path / "x"], "export": [tmp_path / "x.safetensors"]}.get(command, [])
    proc = run_cli(command, out / "checkpoint.json", *extra)
    assert_one_line_error(proc, 2)
    assert f"is the sidecar of the converted folder {out}" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", ["removed", "moved"])
@pytest.mark.parametrize("command", ["convert", "export", "export-shards"])
def test_destination_parent_removed_mid_run_is_one_line(tmp_path, src_dir, how, command):
    """`rm -rf runs/` (or `mv runs old`) while `convert x.pt runs/out` writes: 'internal error: FileNotFoundError',
    exit 70. It is the user's environment: one line, exit 2, the source untouched."""
    import shutil
    import signal
    import time

    src = save({"w": torch.randn(64, 64)}, src_dir / "a.pt", "zip")
    digest = src.read_bytes()
    parent = tmp_path / "runs"
    parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", CKPT_CONVERT_FAULT="after-data:stop")
    args = {"convert": ["convert", src, parent / "out"], "export": ["export", src, parent / "out"],
            "export-shards": ["export", src, parent / "out", "--max-shard-size", "4KB"]}[command]
    if command == "export":
        args[2] = parent / "out.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "convert", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    if how == "removed":
        shutil.rmtree(parent)
    else:
        parent.rename(tmp_path / "old")
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err and "Traceback" not in err, err
    assert "removed or moved" in err, err
    assert src.read_bytes() == digest
    assert not (parent / "out").exists() and not (parent / "out.safetensors").exists()


def test_verify_of_two_converted_folders_says_what_verify_takes(tmp_path, src_dir):
    """`verify out out2` (two outputs) said 'out: is a folder, not a regular file; only regular files are read'."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    convert_checkpoint(src, tmp_path / "out")
    convert_checkpoint(src, tmp_path / "out2")
    proc = run_cli("verify", tmp_path / "out", tmp_path / "out2")
    assert_one_line_error(proc, 2)
    assert "is a converted folder, not a source" in proc.stderr, proc.stderr


_MAP_UNDER_LIMIT = """
import resource, sys
from convert.cli import main
import convert.ops.verify, convert.export, convert.sidecar.safetensors_file  # the baseline, imported first
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
@pytest.mark.parametrize("command", ["verify", "export"])
def test_a_data_file_too_large_to_map_under_ulimit_v_is_out_of_memory(tmp_path, src_dir, command):
    """`ulimit -v` below a data file's size: mapping it failed with ENOMEM, 'internal error: OSError: [Errno 12]
    cannot map the file', exit 70. It is memory: the out-of-memory line, exit 2."""
    src = save({"w": torch.zeros(96 << 20, dtype=torch.uint8)}, src_dir / "a.pt", "zip")  # 96 MiB > the 32 MiB left
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    args = ["verify", out] if command == "verify" else ["export", out, tmp_path / "w.safetensors"]
    proc = subprocess.run([sys.executable, "-c", _MAP_UNDER_LIMIT, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore"))
    assert_one_line_error(proc, 2)
    assert "out of memory" in proc.stderr, proc.stderr


def test_a_users_checkpoint_json_does_not_make_a_converted_folder(tmp_path):
    """A Trainer folder holding the user's own checkpoint.json was 'already a converted folder' (refused, wrongly)."""
    ck = _trainer_folder(tmp_path)
    (ck / "checkpoint.json").write_text('{"step": 500}')
    proc = run_cli("convert", ck, tmp_path / "out")
    assert "already a converted folder" not in proc.stderr, proc.stderr
    # copied as is it would sit where every tool reads the output's sidecar: the unit is refused, nothing written
    # (it used to be published, then the report step failed on it: exit 2 with the output in place)
    assert_one_line_error(proc, 2)
    assert "checkpoint.json" in proc.stderr and "rename it" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("command", ["convert", "export"])
def test_a_folder_that_refuses_new_files_is_one_line(tmp_path, src_dir, command):
    """DST under /proc (a folder where mkdir says ENOENT): one line naming DST, never an internal error."""
    src = save({"w": torch.randn(3)}, src_dir / "a.pt", "zip")
    proc = run_cli(command, src, "/proc/ckpt-convert-probe" + (".safetensors" if command == "export" else ""))
    assert_one_line_error(proc, 2)
    assert "cannot write /proc/ckpt-convert-probe" in proc.stderr and "removed or moved" not in proc.stderr, proc.stderr


def test_a_header_safetensors_would_refuse_is_never_written(tmp_path, src_dir):
    """export --add-prefix of 51 MB (or millions of tensor names): the file was written with a 102 MB header, which
    safetensors refuses to open ('header too large'). Now refused before writing, one line, nothing left."""
    from convert import UnsupportedValue, export_weights

    src = save({"a": torch.zeros(2), "b": torch.zeros(2)}, src_dir / "a.pt", "zip")
    out = tmp_path / "w.safetensors"
    with pytest.raises(UnsupportedValue, match="safetensors reads"):
        export_weights(src, out, add_prefix="p" * 51_000_000)
    assert os.listdir(tmp_path) == ["src"]


@pytest.mark.parametrize(("key", "what"), [("model_state_dict/w", "is a tensor,"), ("epoch", "a value of type int")])
def test_export_key_of_a_non_dict_says_what_it_is(tmp_path, src_dir, key, what):
    """`export --key model_state_dict/w` said 'is a TensorRef' (an internal class), `--key epoch` 'is a int'."""
    src = save({"model_state_dict": {"w": torch.randn(2)}, "epoch": 3}, src_dir / "a.pt", "zip")
    proc = run_cli("export", src, tmp_path / "w.safetensors", "--key", key)
    assert_one_line_error(proc, 2)
    assert what in proc.stderr and "TensorRef" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("how", ["verify-cli", "load-verify", "load-verify-full"])
@pytest.mark.parametrize("when", ["before-hashing", "while-hashing"])
def test_a_data_file_cut_short_while_verified_is_a_finding_never_a_crash(tmp_path, how, when):
    # verify hashed a data file through its mapping: a file truncated meanwhile killed it with SIGBUS (-7)
    src = save({"w": torch.zeros(1 << 20)}, tmp_path / "m.pt", "zip")
    out = tmp_path / "out"
    convert_checkpoint(src, out)
    data = out / "model.safetensors"
    cut = f"os.truncate({str(data)!r}, 4096)"
    if when == "before-hashing":
        hook = ("import convert.sidecar.safetensors_file as m\nreal = m.SafetensorsFile.sha256\n"
                f"def sha(self):\n    {cut}\n    return real(self)\nm.SafetensorsFile.sha256 = sha\n")
    else:  # after the first chunk has been read
        hook = ("import convert.primitives.hashing as h\nreal = os.preadv\ncalls = [0]\n"
                f"def preadv(fd, bufs, offset):\n    calls[0] += 1\n    if calls[0] == 2:\n        {cut}\n"
                "    return real(fd, bufs, offset)\nh.os = type('os', (), {'preadv': staticmethod(preadv)})\n")
    action = {"verify-cli": f"from convert.cli import main\nsys.exit(main(['verify', {str(out)!r}]))",
              "load-verify": f"from convert import load_checkpoint\nload_checkpoint({str(out)!r}, verify=True)",
              "load-verify-full": f"from convert import load_checkpoint\nload_checkpoint({str(out)!r}, verify=True, "
                                  "mmap=False)"}[how]
    code = f"import os, sys\n{hook}\n{action}\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode > 0, (done.returncode, done.stderr[-2000:])  # an error, not a signal, not success
    text = done.stdout + done.stderr
    if how == "verify-cli":
        assert done.returncode == 3 and "NOT intact" in done.stdout and "Traceback" not in done.stderr, text
        assert "model.safetensors" in done.stdout
    else:  # the API raises the library's own error
        assert "convert.errors" in text or "ConvertError" in text or "MalformedCheckpoint" in text, text
