"""Issue 21: files torch.load reads differently from Python's zipfile or a linear pickle reader.

Each sample (tests/security/differentials.py) really runs its marker payload under
torch.load(weights_only=False), while zipfile / a linear reader sees only a benign pickle. ckpt-convert
must read what torch reads or refuse: `scan` says unsafe (exit 1) naming the ambiguity, and `convert`
refuses (exit 1) in one line without writing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from convert.errors import MalformedCheckpoint, UnsafeCheckpoint
from convert.read import Input, read_tree
from convert.read.framing import check_framing, is_tar_header
from convert.read.zipfile_strict import StrictZip, ZipAmbiguous

from . import differentials, harness, pk

LOAD_ALL = """
import sys, torch
for path in sys.argv[1:]:
    try:
        torch.load(path, weights_only=False)
    except Exception:
        pass
"""


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path, Path]:
    root = tmp_path_factory.mktemp("differentials")
    markers = root / "markers"
    markers.mkdir()
    return differentials.build(root / "samples", markers), markers, root


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], env=harness.env(), capture_output=True,
                          text=True, timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)


def test_torch_runs_every_payload(samples):
    paths, markers, root = samples
    work = root / "torch-cwd"
    work.mkdir()
    subprocess.run([sys.executable, "-c", LOAD_ALL, *map(str, paths.values())], cwd=work, env=harness.env(),
                   capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert sorted(p.name for p in markers.iterdir()) == sorted(paths)


def test_scan_says_unsafe_and_names_the_ambiguity(samples):
    paths, _, root = samples
    proc = _cli("scan", "--format", "json", *paths.values(), cwd=root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reports = {Path(r["path"]).stem: r for r in json.loads(proc.stdout)["files"]}
    assert set(reports) == set(paths)
    for name, report in reports.items():
        assert report["verdict"] == "unsafe", (name, report)
        assert any("parser differential" in f["global"] for f in report["findings"]), (name, report)


@pytest.mark.parametrize("name", sorted(differentials.SAMPLES))
def test_convert_refuses_in_one_line(samples, name):
    paths, _, root = samples
    out = root / f"out-{name}"
    proc = _cli("convert", paths[name], out, cwd=root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ambiguous" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_zipfile_sees_only_the_benign_pickle(samples):
    """The differential is real: Python's zipfile reads the benign data.pkl where torch reads the payload."""
    paths = samples[0]
    for name in ("zip_eocd_offset", "zip64_locator"):
        with zipfile.ZipFile(paths[name]) as zf:
            assert b"system" not in zf.read("archive/data.pkl"), name


def _strict(data: bytes) -> StrictZip:
    return StrictZip(lambda at, n: data[at:at + n], len(data), "t.pt")


def test_strict_zip_reads_a_clean_archive_and_refuses_each_deviation():
    members = differentials.torch_members(differentials.benign(60))
    clean = differentials.plain_zip(members)
    archive = _strict(clean)
    assert archive.read(archive.get("ARCHIVE/Data.pkl"), 1 << 20) == members[0][1]  # miniz: case-insensitive
    for bad in (b"junk" + clean, clean + b"\x00", clean[:-2] + b"\x01\x00" + b"c"):
        with pytest.raises(ZipAmbiguous):
            _strict(bad)
    nul = differentials.plain_zip([("archive/data.pkl\x00x", b"N.")])
    with pytest.raises(ZipAmbiguous, match="NUL"):
        _strict(nul)


def test_inflate_stops_at_the_declared_size_before_allocating():
    """A deflate bomb declaring a small size must not be inflated beyond it (389 KB of NULs -> 400 MB)."""
    import zlib

    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = bomb.compress(b"\x00" * (64 << 20)) + bomb.flush()
    local, central = differentials.zip_parts([("archive/data.pkl", raw)])
    data = bytearray(local + central + differentials.eocd(1, len(central), len(local)))
    for at in (0, len(local)):  # method 8, plain size 1 KiB in the local and the central header
        base = at + (8 if at == 0 else 10)
        data[base:base + 2] = b"\x08\x00"
        data[base + 14:base + 18] = (1024).to_bytes(4, "little")
    archive = _strict(bytes(data))
    with pytest.raises(MalformedCheckpoint, match="inflates to more than"):
        archive.read(archive.members[0], 1 << 30, check_crc=False)


def _framing(data: bytes) -> None:
    check_framing(lambda at, n: data[at:at + n], 0, len(data), "t")


def test_framing_rules():
    _framing(b"\x80\x04\x95" + (2).to_bytes(8, "little") + b"N.")
    with pytest.raises(UnsafeCheckpoint, match="STOP is inside a frame"):
        _framing(b"\x80\x04\x95" + (4).to_bytes(8, "little") + b"N.")
    straddle = b"\x80\x04\x95" + (2).to_bytes(8, "little") + b"X" + (3).to_bytes(4, "little") + b"abc."
    with pytest.raises(UnsafeCheckpoint, match="runs past the end of its frame"):
        _framing(straddle)
    nested = b"\x80\x04\x95" + (11).to_bytes(8, "little") + b"\x95" + (2).to_bytes(8, "little") + b"N."
    with pytest.raises(UnsafeCheckpoint, match="inside the previous frame"):
        _framing(nested)


def test_v7_tar_header_is_a_tar_and_pickles_are_not():
    assert is_tar_header(differentials.v7_tar("true")[:512])
    assert not is_tar_header(pk.proto(pk.dct(), 2) + b"\x00" * 600)


def test_reader_refuses_with_unsafe(samples):
    for path in samples[0].values():
        with pytest.raises(UnsafeCheckpoint, match="ambiguous"), Input(path) as inp:
            read_tree(inp)


def test_zip64_record_and_eocd_must_agree():
    members = differentials.torch_members(differentials.benign(60))
    locals_, central = differentials.zip_parts(members)
    record_at = len(locals_) + len(central)
    def build(eocd_offset: int) -> bytes:
        return (locals_ + central + differentials.zip64_record(3, len(central), len(locals_))
                + differentials.zip64_locator(record_at) + differentials.eocd(3, len(central), eocd_offset))
    assert len(_strict(build(len(locals_))).members) == 3
    assert len(_strict(build(0xFFFFFFFF)).members) == 3
    with pytest.raises(ZipAmbiguous, match="disagree"):
        _strict(build(0))


def test_zip_that_is_also_a_tar_is_ambiguous(tmp_path):
    """torch.load reads it as a zip, its legacy path (and older torch) as a tar: refused as ambiguous."""
    data = bytearray(differentials.plain_zip(differentials.torch_members(differentials.benign(600))))
    block = data[:512]
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\x00 ".encode()
    data[148:156] = block[148:156]  # inside data.pkl's bytes: the zip stays readable by miniz
    assert is_tar_header(bytes(data[:512]))
    path = tmp_path / "t.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(ZipAmbiguous, match="tar header"), Input(path) as inp:
        read_tree(inp)


def test_only_a_local_header_at_byte_0_makes_a_zip(tmp_path):
    """torch's _is_zipfile checks for PK\\x03\\x04: an empty zip (PK\\x05\\x06) goes to its pickle path."""
    path = tmp_path / "empty.pt"
    path.write_bytes(differentials.eocd(0, 0, 0))
    with pytest.raises(MalformedCheckpoint, match="not a checkpoint"), Input(path) as inp:
        read_tree(inp)
