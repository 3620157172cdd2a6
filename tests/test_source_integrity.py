"""The source side of `convert` (issue 16): only regular files, read without a mapping, checked for changes.

A source is never written; only a regular file is opened (a FIFO would block `open`); a source that
changes, shrinks or disappears while it is read is a clean one-line error with no output (never
SIGBUS, never a folder whose recorded sha256 is not of the bytes converted); I/O and decompression
errors are one line naming the file.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from convert import ConvertError, MalformedCheckpoint, convert_checkpoint, read_checkpoint
from convert.api import scan_checkpoint, verify_checkpoint
from convert.errors import UnsupportedValue
from convert.ops import pipeline as pipeline_module
from convert.ops.checkpoint import plan_in_memory
from convert.primitives import source as source_module
from convert.primitives.source import SourceBytes, SourceChanged
from tests.helpers import REPO_ROOT

PY = sys.executable


def cli(*args: str, timeout: float = 60, pre: str = "") -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, optionally after `pre` (Python that installs a fault hook)."""
    code = f"import sys\n{pre}\nfrom convert.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0]


@pytest.fixture()
def zip_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(4096.0), "b": torch.ones(3), "t": torch.arange(12.0).reshape(3, 4).t()}, path)
    return path


@pytest.fixture()
def big_plain_pickle(tmp_path: Path) -> Path:
    """A plain pickle whose numpy array is large enough that the VM reads it in several windows."""
    path = tmp_path / "arrays.pkl"
    import pickle

    with open(path, "wb") as f:
        pickle.dump({"a": np.arange(1 << 20, dtype=np.float64), "n": 3}, f, protocol=4)
    return path


# ------------------------------------------------------------------------------------ regular files only

def test_fifo_source_is_refused_promptly(tmp_path, zip_ckpt):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    convert_checkpoint(zip_ckpt, tmp_path / "folder")
    for args in (("convert", str(fifo), str(tmp_path / "out")), ("scan", str(fifo)), ("inspect", str(fifo)),
                 ("verify", str(fifo), str(tmp_path / "folder"))):
        done = cli(*args, timeout=30)  # opening the FIFO would block forever: the timeout is the failure
        assert done.returncode == 2, (args, done.stderr)
        line = one_line(done.stdout if args[0] == "scan" else done.stderr)  # scan reports each file on stdout
        assert str(fifo) in line and "FIFO" in line and "regular file" in line, line
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConvertError, match="FIFO"):
        read_checkpoint(fifo)


def test_folder_and_device_sources_are_refused(tmp_path):
    with pytest.raises(ConvertError, match="is a folder, not a regular file"):
        convert_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(ConvertError, match="character device"):
        read_checkpoint("/dev/null")
    assert not (tmp_path / "out").exists()


def test_fifo_swapped_in_after_stat_cannot_block(tmp_path, zip_ckpt, monkeypatch):
    """The race: stat sees a regular file, then a FIFO takes its place before open. O_NONBLOCK + fstat refuse it."""
    fifo = tmp_path / "swapped.pt"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(source_module.os, "stat", lambda p, *a, **k: real_stat(zip_ckpt) if Path(p) == fifo
                        else real_stat(p, *a, **k))
    with pytest.raises(ConvertError, match="FIFO"):
        read_checkpoint(fifo)


def test_symlink_to_a_regular_file_is_read(tmp_path, zip_ckpt):
    link = tmp_path / "link.pt"
    link.symlink_to(zip_ckpt)
    assert torch.equal(read_checkpoint(link)["w"], torch.arange(4096.0))


def test_missing_and_unreadable_sources_name_the_path(tmp_path, zip_ckpt, monkeypatch):
    with pytest.raises(ConvertError, match=r"nothere\.pt: no such file"):
        read_checkpoint(tmp_path / "nothere.pt")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(source_module.os, "open", denied)  # tests run as root here: chmod would not deny
    with pytest.raises(ConvertError, match=rf"{zip_ckpt.name}: permission denied"):
        read_checkpoint(zip_ckpt)


def test_io_error_while_reading_names_the_path(big_plain_pickle, monkeypatch):
    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(source_module.os, "pread", eio)
    with pytest.raises(ConvertError, match=rf"{big_plain_pickle}: cannot read \(Input/output error\)"):
        read_checkpoint(big_plain_pickle)


# ---------------------------------------------------------------------------- broken compressed members

def _recompressed_checkpoint(method: int) -> bytes:
    """A small torch.save zip whose data.pkl member is compressed with `method` (the rest stored)."""
    raw = io.BytesIO()
    torch.save({"w": torch.arange(8.0), "note": "x" * 300}, raw)
    src = zipfile.ZipFile(io.BytesIO(raw.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            kind = method if info.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info.filename), compress_type=kind)
    return out.getvalue()


def _deflated_checkpoint(corrupt: bool) -> bytes:
    data = bytearray(_recompressed_checkpoint(zipfile.ZIP_DEFLATED))
    if corrupt:
        info = next(i for i in zipfile.ZipFile(io.BytesIO(bytes(data))).infolist() if i.filename.endswith("data.pkl"))
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start] = 0x05  # final block, dynamic Huffman, then code lengths that cannot form a code
        data[start + 1:start + 4] = b"\xff\xff\xff"
    return bytes(data)


def test_corrupt_deflate_stream_is_malformed_input(tmp_path):
    good = tmp_path / "good.pt"
    good.write_bytes(_deflated_checkpoint(corrupt=False))
    assert torch.equal(read_checkpoint(good)["w"], torch.arange(8.0))  # deflated data.pkl is supported
    bad = tmp_path / "bad.pt"
    bad.write_bytes(_deflated_checkpoint(corrupt=True))
    with pytest.raises(zlib.error):  # the bug class: what zipfile itself raises here is zlib's, not its own
        zipfile.ZipFile(bad).read("archive/data.pkl")
    with pytest.raises(MalformedCheckpoint, match="is corrupt"):
        read_checkpoint(bad)
    done = cli("convert", str(bad), str(tmp_path / "out"))
    assert done.returncode == 2 and "malformed" in one_line(done.stderr)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- a source changing underneath

def _mutate_after_reading(monkeypatch, path: Path, change) -> None:
    """Change `path` right after the reader has built its tree (before the tensors are copied)."""
    real = pipeline_module.make_plan

    def make_plan_then_change(*args, **kwargs):
        plan = real(*args, **kwargs)
        change(path)
        return plan
    monkeypatch.setattr(pipeline_module, "make_plan", make_plan_then_change)


def _rewrite_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-300:-200] = bytes(100)  # inside the last stored tensors / the zip directory's neighbourhood
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(data)


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _replace(path: Path) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


@pytest.mark.parametrize("change", [_rewrite_same_size, _truncate, _replace])
def test_source_changed_during_convert_writes_nothing(tmp_path, zip_ckpt, monkeypatch, change):
    _mutate_after_reading(monkeypatch, zip_ckpt, change)
    dst = tmp_path / "out"
    with pytest.raises(SourceChanged, match=rf"{zip_ckpt} changed while it was being converted; nothing was written"):
        convert_checkpoint(zip_ckpt, dst)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp folder left either


def test_source_changed_between_reads_is_reported_by_the_cli(tmp_path, zip_ckpt):
    hook = ("import os, convert.ops.pipeline as a\nreal = a.make_plan\n"
            f"def mp(*x, **k):\n    p = real(*x, **k)\n    os.utime({str(zip_ckpt)!r}, ns=(1, 1))\n    return p\n"
            "a.make_plan = mp")
    done = cli("convert", str(zip_ckpt), str(tmp_path / "out"), pre=hook)
    assert done.returncode == 2
    assert one_line(done.stderr) == (f"ckpt-convert: error: {zip_ckpt} changed while it was being converted; "
                                     "nothing was written")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["truncate", "replace", "rewrite"])
@pytest.mark.parametrize("legacy", [False, True])
def test_scan_of_a_file_changed_between_or_during_its_passes_is_unreadable_never_a_crash(tmp_path, change, legacy):
    # the opcode walk read the file through a mapping: a file cut short under it killed scan with SIGBUS
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1 << 18)}, path, _use_new_zipfile_serialization=not legacy)
    mutate = {"truncate": f"os.truncate({str(path)!r}, 100)",
              "replace": f"t = {str(path)!r} + '.new'; open(t, 'wb').write(open({str(path)!r}, 'rb').read()); "
                         f"os.replace(t, {str(path)!r})",
              "rewrite": f"f = open({str(path)!r}, 'r+b'); f.seek(-64, 2); f.write(bytes(64)); f.close()"}[change]
    hook = ("import os, convert.scan.scanner as s\nreal = s.open_sources\n"
            f"def changed_then(*args):\n    {mutate}\n    return real(*args)\n"
            "s.open_sources = changed_then")
    done = cli("scan", str(path), pre=hook)
    assert done.returncode >= 0, done.stderr  # not killed by a signal
    assert f"{path} changed while it was being scanned" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "SAFE" not in done.stdout.upper().split()


def test_sha256_recorded_is_of_the_converted_bytes(tmp_path, zip_ckpt):
    import hashlib
    import json

    convert_checkpoint(zip_ckpt, tmp_path / "out")
    sidecar = json.loads((tmp_path / "out" / "checkpoint.json").read_text())
    assert sidecar["source"]["sha256"] == hashlib.sha256(zip_ckpt.read_bytes()).hexdigest()


def _truncating_read(path: Path, after: int):
    """A SourceBytes.read that truncates `path` to a quarter once it has served `after` reads."""
    real = SourceBytes.read
    calls = [0]

    def read(self, offset, n):
        calls[0] += 1
        if calls[0] == after:
            os.truncate(path, path.stat().st_size // 4)
        return real(self, offset, n)
    return read


@pytest.mark.parametrize("after", [1, 3])
def test_plain_pickle_truncated_mid_read_is_a_clean_error(tmp_path, big_plain_pickle, monkeypatch, after):
    """Before: the VM read the pickle through an mmap and the process died of SIGBUS (exit 135)."""
    monkeypatch.setattr(SourceBytes, "read", _truncating_read(big_plain_pickle, after))
    with pytest.raises(SourceChanged, match="changed while it was being converted; nothing was written"):
        convert_checkpoint(big_plain_pickle, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncation_mid_run_in_a_real_process_exits_2(tmp_path, big_plain_pickle, zip_ckpt):
    """The same in a separate process, through the CLI: exit 2, one line, no folder; never a signal."""
    for src, hook in ((big_plain_pickle, "import convert.primitives.source as s\nreal = s.SourceBytes.read\n"
                       "n = [0]\ndef read(self, o, k):\n    n[0] += 1\n"
                       "    if n[0] == 2: os.truncate(self.path, 1000)\n    return real(self, o, k)\n"
                       "s.SourceBytes.read = read"),
                      (zip_ckpt, "import convert.ops.pipeline as a\nreal = a.make_plan\n"
                       "def mp(*x, **k):\n    p = real(*x, **k)\n    os.truncate(" + repr(str(zip_ckpt)) + ", 2000)\n"
                       "    return p\na.make_plan = mp")):
        out = tmp_path / f"out-{src.stem}"
        done = cli("convert", str(src), str(out), pre="import os\n" + hook)
        assert done.returncode == 2, (done.returncode, done.stderr)
        assert "changed while it was being converted" in one_line(done.stderr)
        assert not out.exists()


def test_reading_apis_check_the_source_too(tmp_path, zip_ckpt, monkeypatch):
    convert_checkpoint(zip_ckpt, tmp_path / "out")
    real = SourceBytes.read

    def read_then_touch(self, offset, n):
        data = real(self, offset, n)
        os.utime(self.path, ns=(5, 5))
        return data
    monkeypatch.setattr(SourceBytes, "read", read_then_touch)
    for call in (lambda: read_checkpoint(zip_ckpt), lambda: scan_checkpoint(zip_ckpt),
                 lambda: plan_in_memory(zip_ckpt), lambda: verify_checkpoint(zip_ckpt, tmp_path / "out")):
        with pytest.raises(SourceChanged, match=rf"{zip_ckpt} changed while it was being read"):
            call()


def test_source_is_never_written(tmp_path, zip_ckpt, big_plain_pickle):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (zip_ckpt, big_plain_pickle)}
    for p in before:
        convert_checkpoint(p, tmp_path / f"out-{p.stem}")
        read_checkpoint(p)
    assert before == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before}


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compression_torch_cannot_read_is_unsupported(tmp_path, method):
    """torch's zip reader (miniz) reads stored and deflated members only: nothing else is a torch checkpoint."""
    path = tmp_path / "m.pt"
    path.write_bytes(_recompressed_checkpoint(method))
    with pytest.raises(UnsupportedValue, match="compression method"):
        read_checkpoint(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED])
def test_corrupt_compressed_member_is_malformed(tmp_path, method):
    data = bytearray(_recompressed_checkpoint(method))
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(data))
    assert torch.equal(read_checkpoint(path)["w"], torch.arange(8.0))
    info = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for j in range(8, 24):
        data[start + j] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(MalformedCheckpoint, match="is corrupt"):
        read_checkpoint(path)
