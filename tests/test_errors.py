"""Bad, hostile and unsupported inputs: refused with the right exit code, one clear line, nothing run,
nothing left behind."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from convert import (
    ConvertError,
    MalformedCheckpoint,
    UnsafeCheckpoint,
    UnsupportedValue,
    convert_checkpoint,
    read_checkpoint,
    scan_checkpoint,
)
from tests.helpers import (
    EvilEval,
    EvilPopen,
    EvilSystem,
    assert_one_line_error,
    handmade_os_system_pickle,
    pickled_name,
    run_cli,
    save,
)


def test_exception_hierarchy_and_exit_codes():
    assert issubclass(UnsafeCheckpoint, ConvertError)
    assert issubclass(MalformedCheckpoint, ConvertError)
    assert issubclass(UnsupportedValue, ConvertError)
    assert UnsafeCheckpoint("x").exit_code == 1
    assert MalformedCheckpoint("x").exit_code == 2
    assert UnsupportedValue("x").exit_code == 2


# ------------------------------------------------------------------------------ malformed input


@pytest.fixture
def good_zip(src_dir, small_state_dict):
    return save(small_state_dict, src_dir / "good.pt", "zip")


@pytest.fixture
def good_legacy(src_dir, small_state_dict):
    return save(small_state_dict, src_dir / "good_legacy.pt", "legacy")


def _truncate(path, dst, fraction=0.5):
    data = path.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_missing_file_cli(tmp_path, out_parent):
    proc = run_cli("convert", tmp_path / "does-not-exist.pt", out_parent / "out")
    assert_one_line_error(proc, 2)
    assert "does-not-exist.pt" in proc.stderr
    assert os.listdir(out_parent) == []


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.05])
def test_truncated_zip_api(src_dir, out_parent, good_zip, fraction):
    bad = _truncate(good_zip, src_dir / "trunc.pt", fraction)
    with pytest.raises(MalformedCheckpoint) as info:
        convert_checkpoint(bad, out_parent / "out")
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    assert os.listdir(out_parent) == []
    with pytest.raises(MalformedCheckpoint):
        read_checkpoint(bad)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.05])
def test_truncated_legacy_api(src_dir, out_parent, good_legacy, fraction):
    bad = _truncate(good_legacy, src_dir / "trunc_legacy.pt", fraction)
    with pytest.raises(MalformedCheckpoint):
        convert_checkpoint(bad, out_parent / "out")
    assert os.listdir(out_parent) == []


def test_truncated_zip_cli(src_dir, out_parent, good_zip):
    bad = _truncate(good_zip, src_dir / "trunc.pt")
    proc = run_cli("convert", bad, out_parent / "out")
    assert_one_line_error(proc, 2)
    assert os.listdir(out_parent) == []


def test_truncated_legacy_cli(src_dir, out_parent, good_legacy):
    bad = _truncate(good_legacy, src_dir / "trunc_legacy.pt")
    proc = run_cli("convert", bad, out_parent / "out")
    assert_one_line_error(proc, 2)
    assert os.listdir(out_parent) == []


def test_random_bytes_cli(src_dir, out_parent):
    bad = src_dir / "random.pt"
    bad.write_bytes(random.Random(1234).randbytes(4096))
    proc = run_cli("convert", bad, out_parent / "out")
    assert_one_line_error(proc, 2)
    assert os.listdir(out_parent) == []


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_api(src_dir, out_parent, seed):
    bad = src_dir / f"random{seed}.bin"
    bad.write_bytes(random.Random(seed).randbytes(2048))
    with pytest.raises(MalformedCheckpoint):
        convert_checkpoint(bad, out_parent / "out")
    assert os.listdir(out_parent) == []


def test_empty_file_and_directory_as_source(src_dir, out_parent):
    empty = src_dir / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(MalformedCheckpoint):
        convert_checkpoint(empty, out_parent / "out")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(src_dir, out_parent / "out2")
    assert info.value.exit_code == 2
    assert os.listdir(out_parent) == []


def test_corrupted_tensor_data_in_zip(src_dir, out_parent, good_zip):
    # a zip whose data.pkl references a storage record that is missing
    import zipfile

    bad = src_dir / "missing_storage.pt"
    with zipfile.ZipFile(good_zip) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if "/data/" in item.filename and item.filename.rsplit("/", 1)[-1] == "0":
                continue
            zout.writestr(item, zin.read(item.filename))
    with pytest.raises(MalformedCheckpoint):
        convert_checkpoint(bad, out_parent / "out")
    assert os.listdir(out_parent) == []


# ------------------------------------------------------------------------------ hostile pickles

# Each payload and the names that correctly identify its global: the Python 3 name, or the name the
# pickle literally contains (protocols < 3 write Python 2 names: __builtin__.eval, commands.Popen;
# os.system is pickled as posix.system on Linux).
EVIL = {
    "os.system": (EvilSystem, {pickled_name(os.system), "os.system"}),
    "builtins.eval": (EvilEval, {"builtins.eval", "__builtin__.eval"}),
    "subprocess.Popen": (EvilPopen, {"subprocess.Popen", "commands.Popen"}),
}


def names_one_of(names, text) -> bool:
    return any(n in text for n in names)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle0", "pickle2", "pickle5"])
@pytest.mark.parametrize("kind", list(EVIL))
def test_unsafe_pickles_refused_api(src_dir, out_parent, fmt, kind):
    cls, names = EVIL[kind]
    canary = out_parent.parent / "CANARY"
    src = save({"payload": {"deep": [cls(canary)]}, "w": torch.ones(2)} if fmt in ("zip", "legacy")
               else {"payload": {"deep": [cls(canary)]}}, src_dir / "evil.pt", fmt)
    with pytest.raises(UnsafeCheckpoint) as info:
        convert_checkpoint(src, out_parent / "out")
    assert info.value.exit_code == 1
    assert names_one_of(names, str(info.value)), str(info.value)
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(src)
    report = scan_checkpoint(src)
    assert names & {f.name for f in report.unsafe}, report.unsafe
    assert all(isinstance(f.where, str) and f.where for f in report.unsafe)
    assert names & set(report.globals)
    assert not canary.exists()
    assert os.listdir(out_parent) == []


@pytest.mark.parametrize("kind", ["builtins.eval", "subprocess.Popen"])  # os.system: test_handmade_os_system_pickle
def test_unsafe_pickles_refused_cli(tmp_path, src_dir, out_parent, kind):
    cls, names = EVIL[kind]
    canary = tmp_path / "CANARY"
    src = save({"model": {"w": torch.ones(2)}, "evil": cls(canary)}, src_dir / "evil.pt", "zip")
    proc = run_cli("convert", src, out_parent / "out", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert names_one_of(names, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not canary.exists()
    assert os.listdir(out_parent) == []
    assert not (tmp_path / "CANARY").exists()


def test_handmade_os_system_pickle(tmp_path, src_dir, out_parent):
    canary = tmp_path / "CANARY"
    src = src_dir / "evil.pkl"
    src.write_bytes(handmade_os_system_pickle(canary))
    proc = run_cli("convert", src, out_parent / "out", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "os.system" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not canary.exists()
    assert os.listdir(out_parent) == []
    with pytest.raises(UnsafeCheckpoint) as info:
        convert_checkpoint(src, out_parent / "out")
    assert "os.system" in str(info.value)
    assert "os.system" in [f.name for f in scan_checkpoint(src).unsafe]


def test_several_unsafe_globals_are_all_named(tmp_path, src_dir, out_parent):
    canary = tmp_path / "CANARY"
    src = save({"a": EvilSystem(canary), "b": EvilEval(canary), "c": EvilPopen(canary)}, src_dir / "evil.pt", "zip")
    proc = run_cli("scan", src, cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    out = proc.stdout + proc.stderr
    for _, names in EVIL.values():
        assert names_one_of(names, out), names
    with pytest.raises(UnsafeCheckpoint) as info:
        convert_checkpoint(src, out_parent / "out")
    found = " ".join(str(getattr(f, "name", f)) for f in info.value.findings) + " " + str(info.value)
    for _, names in EVIL.values():
        assert names_one_of(names, found), names
    assert not canary.exists()


def test_unsafe_global_inside_module_attribute(tmp_path, src_dir, out_parent):
    # The malicious object can sit anywhere in the pickle, including inside an nn.Module attribute.
    canary = tmp_path / "CANARY"
    m = nn.Linear(2, 2)
    m.hook = EvilSystem(canary)
    src = save({"model": m}, src_dir / "evil_module.pt", "legacy")
    with pytest.raises(UnsafeCheckpoint):
        convert_checkpoint(src, out_parent / "out")
    assert not canary.exists()
    assert os.listdir(out_parent) == []


# ------------------------------------------------------------------------------ unsupported content


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x) + 1


def test_torchscript_archive_refused(tmp_path, src_dir, out_parent):
    src = src_dir / "scripted.pt"
    torch.jit.save(torch.jit.script(_Tiny()), str(src))
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(src, out_parent / "out")
    assert "torchscript" in str(info.value).lower()
    assert os.listdir(out_parent) == []
    proc = run_cli("convert", src, out_parent / "out", cwd=tmp_path)
    assert proc.returncode != 0
    assert "torchscript" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert os.listdir(out_parent) == []


def test_quantized_tensor_refused_naming_the_key(tmp_path, src_dir, out_parent):
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    src = save({"layer": {"qweight_xyz": q, "bias": torch.zeros(4)}}, src_dir / "quant.pt", "zip")
    with pytest.raises(UnsupportedValue) as info:
        convert_checkpoint(src, out_parent / "out")
    assert info.value.exit_code == 2
    assert "qweight_xyz" in str(info.value)
    proc = run_cli("convert", src, out_parent / "out", cwd=tmp_path)
    assert_one_line_error(proc, 2)
    assert "qweight_xyz" in proc.stderr
    assert os.listdir(out_parent) == []


def test_sparse_tensor_refused(src_dir, out_parent):
    sp = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.tensor([1.0, 2.0]), (3,))
    src = save({"sparse_thing": sp}, src_dir / "sparse.pt", "zip")
    with pytest.raises(UnsupportedValue) as info:
        convert_checkpoint(src, out_parent / "out")
    assert info.value.exit_code == 2
    assert os.listdir(out_parent) == []


def test_scanning_and_reading_never_run_the_pickle(tmp_path, src_dir):
    canary = tmp_path / "CANARY"
    src = save({"x": EvilSystem(canary)}, src_dir / "evil.pt", "pickle2")
    report = scan_checkpoint(src)
    assert report.format == "pickle"
    assert report.unsafe
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(src)
    assert not canary.exists()
    # sanity: the payload really is live (so the canary checks in this file mean something)
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))", str(src)],
                   cwd=tmp_path, check=False, capture_output=True)
    assert canary.exists()
