"""Files that ckpt-convert must read exactly as the loaders that will later read them (issue 21).

Each attack sample is built here, deterministically, with a harmless marker payload (it creates a file).
The real loader (torch.load(weights_only=False) or dcp.load, in a child in a scratch folder) runs it,
and ckpt-convert's `scan` says unsafe (exit 1) and `convert` refuses. Resource attacks end in bounded
time and memory (a child under RLIMIT_AS) with a clean one-line error.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convert import convert_checkpoint, load_checkpoint, read_checkpoint
from convert.errors import UnsafeCheckpoint
from convert.read import gadgets
from convert.scan import SUSPICIOUS, UNSAFE, scan_file
from convert.scan.verdicts import classify_global
from tests.helpers import run_cli
from tests.security import harness, pk

MARKER = "marker.txt"

TORCH_LOAD = """
import sys, warnings, torch
warnings.simplefilter("ignore")
try:
    torch.load(sys.argv[1], weights_only=False)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _fires(loader_script: str, target: Path, scratch: Path) -> bool:
    """Run `loader_script` on `target` in a child whose working folder is `scratch`: did the marker appear?"""
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", loader_script, str(target)], cwd=scratch, env=harness.env(),
                   capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    return any(p.name.startswith("marker") for p in scratch.iterdir())


def fires_under_torch_load(path: Path, scratch: Path) -> bool:
    """torch.load(weights_only=False) of `path`: does its payload run?"""
    return _fires(TORCH_LOAD, path, scratch)


def assert_refused(path: Path, tmp_path: Path) -> None:
    """scan: unsafe, exit 1; convert: refused (exit 1, one line); the Python API raises UnsafeCheckpoint."""
    scanned = run_cli("scan", path)
    assert scanned.returncode == 1, (scanned.stdout, scanned.stderr)
    assert scan_file(path).verdict == UNSAFE
    out = tmp_path / f"out-{path.name}"
    converted = run_cli("convert", path, out)
    assert converted.returncode == 1, (converted.stdout, converted.stderr)
    assert len(converted.stderr.strip().splitlines()) == 1 and "Traceback" not in converted.stderr
    assert not out.exists()
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(path)


# ----------------------------------------------------------------------------- pickle's fix_imports

def _open_marker(module: str, name: str = "open", version: int = 2) -> bytes:
    """module.name("marker.txt", "w") at pickle protocol `version` (fix_imports maps the Python 2 names)."""
    return pk.proto(pk.call(pk.glob(module, name), pk.text(MARKER), pk.text("w")), version)


PY2_GADGETS = {
    "cStringIO": _open_marker("cStringIO"),  # -> io.open
    "StringIO": _open_marker("StringIO"),  # -> io.open
    "anydbm": pk.proto(pk.call(pk.glob("anydbm", "open"), pk.text("marker"), pk.text("c")), 2),  # -> dbm.open
    "dumbdbm": pk.proto(pk.call(pk.glob("dumbdbm", "open"), pk.text("marker"), pk.text("c")), 2),  # -> dbm.dumb.open
    # STACK_GLOBAL is not gated by the protocol: at protocol 2 its names are mapped too
    "stack-global-protocol-2": pk.proto(pk.call(pk.sglob("cStringIO", "open"), pk.text(MARKER), pk.text("w")), 2),
    # no PROTO opcode at all: protocol 0, where fix_imports applies too
    "cStringIO-protocol-0": pk.call(pk.glob("cStringIO", "open"), pk.text(MARKER), pk.text("w")) + b".",
}


@pytest.mark.parametrize("name", sorted(PY2_GADGETS))
def test_python2_module_names_are_the_gadgets_pickle_maps_them_to(name, tmp_path):
    path = tmp_path / f"{name}.pt"
    path.write_bytes(PY2_GADGETS[name])
    assert fires_under_torch_load(path, tmp_path / "scratch")
    assert_refused(path, tmp_path)


def test_fix_imports_applies_only_below_protocol_3(tmp_path):
    """At protocol 3 pickle imports `cStringIO` unmapped (and fails): the file is a custom class, not io."""
    path = tmp_path / "p3.pt"
    path.write_bytes(_open_marker("cStringIO", version=3))
    assert not fires_under_torch_load(path, tmp_path / "scratch")
    # the scanner still names what a pickle with other tables could reach, but not io.open
    assert "io.open" not in scan_file(path).globals
    # a later PROTO 2 in the same stream switches the mapping on, as in pickle's Unpickler
    body = pk.call(pk.glob("cStringIO", "open"), pk.text(MARKER), pk.text("w"))
    path.write_bytes(b"\x80\x03\x80\x02" + body + b".")
    assert fires_under_torch_load(path, tmp_path / "scratch2")
    assert_refused(path, tmp_path)


def test_protocol_2_builtin_names_load_as_torch_load_gives_them(tmp_path):
    """omegaconf-style metadata pickled at protocol 2 names __builtin__.dict/list/long/set: builtins after fix_imports."""
    path = tmp_path / "hparams.pt"
    body = pk.dct(
        (pk.text("list"), pk.call(pk.glob("__builtin__", "list"), pk.lst(pk.integer(1), pk.integer(2)))),
        (pk.text("set"), pk.call(pk.glob("__builtin__", "set"), pk.lst(pk.integer(3)))),
        (pk.text("object_type"), pk.glob("__builtin__", "dict")),  # omegaconf's metadata: class references
        (pk.text("key_type"), pk.glob("__builtin__", "long")),
    )
    path.write_bytes(pk.proto(body, 2))
    expected = pickle.loads(path.read_bytes())
    assert expected == {"list": [1, 2], "set": {3}, "object_type": dict, "key_type": int}
    got = read_checkpoint(path)
    assert got["list"] == [1, 2] and got["set"] == {3}
    # recorded under the names pickle imports
    assert repr(got["object_type"]) == "<global builtins.dict>" and repr(got["key_type"]) == "<global builtins.int>"
    report = scan_file(path)
    assert report.verdict != UNSAFE
    assert "builtins.dict" in report.globals and not any(g.startswith("__builtin__") for g in report.globals)


def test_protocol_2_state_dict_with_python2_names_converts_equal_to_torch_load(tmp_path):
    """A real torch.save at protocol 2 whose extra metadata names __builtin__ types: converts, loads equal."""


    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "hparams": {"layers": [1, 2], "lr": 0.5}}
    path = tmp_path / "ckpt.pt"
    torch.save(state, path, pickle_protocol=2)
    out = tmp_path / "out"
    convert_checkpoint(path, out)
    back = load_checkpoint(out)
    ref = torch.load(path, weights_only=False)
    assert torch.equal(back["w"], ref["w"]) and back["hparams"] == ref["hparams"]


# ----------------------------------------------------------------- stdlib names user packages also take

SHADOW_TABLE = [
    # (module, name, verdict): the standard library's members stay gadgets ...
    ("code", "interact", UNSAFE), ("code", "InteractiveInterpreter", UNSAFE), ("code", "InteractiveConsole.push", UNSAFE),
    ("code", "compile_command", UNSAFE), ("code", "sys.exit", UNSAFE), ("code", "_private", UNSAFE),
    ("codeop", "Compile", UNSAFE), ("site", "main", UNSAFE), ("site", "addsitedir", UNSAFE),
    ("profile", "run", UNSAFE), ("profile", "Profile.runctx", UNSAFE), ("cProfile", "runctx", UNSAFE),
    ("timeit", "timeit", UNSAFE), ("trace", "Trace", UNSAFE), ("test", "support", UNSAFE),
    ("test.support.script_helper", "assert_python_ok", UNSAFE), ("test.test_os", "TestCase", UNSAFE),
    ("test.libregrtest.main", "main", UNSAFE),
    # ... and every way out is still seen below a user package's name
    ("code.models", "os.system", UNSAFE), ("test.models", "__builtins__", UNSAFE), ("site.x", "__class__", UNSAFE),
    # ... while a user package of the same name holds custom classes: what the standard library does not have
    ("code.models", "Net", SUSPICIOUS), ("code", "Net", SUSPICIOUS), ("code.models.resnet", "ResNet.Block", SUSPICIOUS),
    ("site.config", "Settings", SUSPICIOUS), ("test.models", "Net", SUSPICIOUS), ("test", "Net", SUSPICIOUS),
    ("profile.schema", "UserProfile", SUSPICIOUS), ("profile", "UserProfile", SUSPICIOUS),
]


@pytest.mark.parametrize(("module", "name", "verdict"), SHADOW_TABLE)
def test_stdlib_gadgets_are_module_name_pairs(module, name, verdict):
    assert classify_global(module, name)[0] == verdict
    assert gadgets.is_dangerous(module, name) == (verdict == UNSAFE)


USER_PACKAGE_SAVE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from code.models import Net
torch.save({"net": Net(), "w": torch.ones(2)}, sys.argv[2])
"""


def test_a_user_package_named_code_is_a_custom_class_not_a_gadget(tmp_path):
    pkg = tmp_path / "src" / "code"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("class Net:\n    def __init__(self):\n        self.width = 3\n")
    path = tmp_path / "user.pt"
    proc = subprocess.run([sys.executable, "-c", USER_PACKAGE_SAVE, str(tmp_path / "src"), str(path)],
                          env=harness.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = scan_file(path)
    assert report.verdict == SUSPICIOUS and "code.models.Net" in report.globals
    assert run_cli("scan", path).returncode == 0
    got = read_checkpoint(path)
    assert got["net"].qualname == "code.models.Net" and got["net"].state == {"width": 3}


def test_the_real_profile_run_is_still_refused(tmp_path):
    path = tmp_path / "profile.pt"
    path.write_bytes(pk.proto(pk.call(pk.glob("profile", "run"), pk.text(f"open({MARKER!r}, 'w').close()")), 2))
    assert fires_under_torch_load(path, tmp_path / "scratch")
    assert_refused(path, tmp_path)


# ------------------------------------------------------------------------------------------- DCP

DCP_LOAD = """
import sys, warnings, torch
import torch.distributed.checkpoint as dcp
warnings.simplefilter("ignore")
try:
    dcp.load({"w": torch.zeros(2, 2), "cfg": 0}, checkpoint_id=sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def fires_under_dcp_load(folder: Path, scratch: Path) -> bool:
    """dcp.load of `folder` (no process group: rank 0): does its payload run?"""
    return _fires(DCP_LOAD, folder, scratch)


def _dcp(tmp_path: Path, values: dict | None = None) -> Path:
    from tests.dcp_build import write_chunked

    return write_chunked(tmp_path / "ck", {"w": (torch.arange(4.0).reshape(2, 2), [((0, 0), (1, 2)), ((1, 0), (1, 2))])},
                         values if values is not None else {"cfg": {"lr": 0.1}})


def assert_dcp_refused(folder: Path, tmp_path: Path, code: int = 1) -> str:
    scanned = run_cli("scan", folder)
    assert scanned.returncode == code, (scanned.stdout, scanned.stderr)
    out = tmp_path / "dcp-out"
    converted = run_cli("convert", folder, out)
    assert converted.returncode == code, (converted.stdout, converted.stderr)
    assert len(converted.stderr.strip().splitlines()) == 1 and "Traceback" not in converted.stderr
    assert not out.exists()
    return converted.stderr


def test_rank_local_metadata_is_read_when_metadata_fails_and_so_is_checked(tmp_path):
    folder = _dcp(tmp_path)
    (folder / "__0.metadata").write_bytes(_open_marker("io", version=4))
    (folder / ".metadata").write_bytes((folder / ".metadata").read_bytes()[:-1])  # pickle.load fails: no STOP
    assert fires_under_dcp_load(folder, tmp_path / "scratch")
    assert_dcp_refused(folder, tmp_path)


def test_rank_local_metadata_that_differs_is_ambiguous(tmp_path):
    folder = _dcp(tmp_path)
    other = _dcp(tmp_path / "other", {"cfg": {"lr": 0.1}, "step": 3})
    assert (other / ".metadata").read_bytes() != (folder / ".metadata").read_bytes()
    (folder / "__0.metadata").write_bytes((other / ".metadata").read_bytes())  # benign, but not the same file
    err = assert_dcp_refused(folder, tmp_path)
    assert "__0.metadata" in err
    (folder / "__0.metadata").write_bytes((folder / ".metadata").read_bytes())  # the same bytes: no ambiguity
    assert run_cli("convert", folder, tmp_path / "same").returncode == 0


def test_metadata_pickle_rejects_is_refused_by_the_reader_too():
    """READONLY_BUFFER on a non-buffer: pickle.load raises, so the VM must not accept it (dcp.load would fall back)."""
    raw = pk.proto(pk.integer(1) + b"\x98", 5)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises
        pickle.loads(raw)
    from convert.errors import MalformedCheckpoint
    from convert.read.vm import PickleVM

    with pytest.raises(MalformedCheckpoint):
        PickleVM(raw, source="x").run()
    assert PickleVM(pk.proto(pk.raw_bytes(b"ab") + b"\x98", 5), source="x").run() == b"ab"


class _OpenMarker:
    def __reduce__(self):
        return (open, (MARKER, "w"))


def test_a_bytes_item_is_unpickled_by_dcp_load_and_refused_here(tmp_path):
    folder = _dcp(tmp_path, {"cfg": _OpenMarker()})
    assert fires_under_dcp_load(folder, tmp_path / "scratch")
    assert "cfg" in assert_dcp_refused(folder, tmp_path)


def test_a_fifo_part_does_not_hang(tmp_path):
    import os

    folder = _dcp(tmp_path)
    part = sorted(folder.glob("*.distcp"))[0]
    part.unlink()
    os.mkfifo(part)
    for command in ("scan", "convert"):
        proc = run_cli(command, folder, *([tmp_path / "out"] if command == "convert" else []), timeout=60)
        assert proc.returncode == 2 and "FIFO" in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)


def test_a_part_changed_after_reading_is_noticed(tmp_path):
    from convert.primitives.source import SourceChanged
    from convert.sources.dcp_folder import DcpFolder

    folder = _dcp(tmp_path)
    with DcpFolder(folder) as dcp_folder:
        part = sorted(folder.glob("*.distcp"))[0]
        with open(part, "ab") as f:
            f.write(b"\0")
        with pytest.raises(SourceChanged):
            dcp_folder.check_unchanged()


def test_tiling_of_many_chunks():
    from convert.model.tiling import tiling_problem

    n = 20_000
    columns = [((0, i), (4, 1)) for i in range(n)]  # every chunk shares the first offset: the old quadratic case
    assert tiling_problem((4, n), columns) is None
    grid = [((r, c), (1, 1)) for r in range(100) for c in range(200)]
    assert tiling_problem((100, 200), grid) is None
    overlapping = [*columns[:-1], ((0, n - 2), (4, 1))]
    assert "overlap" in tiling_problem((4, n), overlapping)
    moved = [*columns[:-2], ((0, n - 2), (2, 2)), ((2, n - 2), (2, 2))]  # equal volume, a real tiling
    assert tiling_problem((4, n), moved) is None
    # a pinwheel: five boxes tiling a square with no straight cut; not what a sharding writes, refused
    pinwheel = [((0, 0), (2, 1)), ((0, 1), (1, 2)), ((1, 1), (1, 1)), ((2, 0), (1, 2)), ((1, 2), (2, 1))]
    assert tiling_problem((3, 3), pinwheel) is not None
    # a staircase that needs a split per box in alternating dims ends within the budget
    stairs, x = [], 0
    for _ in range(2000):
        stairs.append(((x, 0), (1, 1)))
        x += 1
    assert tiling_problem((x, 1), stairs) is None


# ------------------------------------------------------------------------------------ resources

def _limited_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The command line in a child under RLIMIT_AS (3 GiB) and a timeout: a resource attack must end cleanly."""
    return harness.run_limited(["-m", "convert", *map(str, args)], timeout=300, cwd=cwd)


def assert_clean_failure(proc: subprocess.CompletedProcess, *words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "MemoryError" not in err, err
    assert all(w in err for w in words), err


def test_one_big_string_referenced_many_times_stops_before_the_sidecar_is_built(tmp_path):
    """~1 MB of pickle: a 512 KiB string and 250,000 references to it (128 GB of JSON if written out)."""
    refs = 250_000
    body = pk.text("x" * (512 << 10)) + pk.put(0) + pop_() + b"]" + b"(" + pk.get(0) * refs + b"e"
    path = tmp_path / "strings.pt"
    path.write_bytes(pk.proto(pk.dct((pk.text("w"), pk.integer(1)), (pk.text("names"), body)), 4))
    assert path.stat().st_size < (1 << 20) + 4096
    proc = _limited_cli("convert", path, tmp_path / "out", cwd=tmp_path)
    assert_clean_failure(proc, "sidecar")
    assert not (tmp_path / "out").exists()


def pop_() -> bytes:
    return pk.pop()


MERSENNE = (1 << 61) - 1  # hash(k * MERSENNE) == 0 for every int k


def test_dict_keys_that_all_hash_alike_are_refused_in_the_reader(tmp_path):
    keys = 200_000
    pairs = b"".join(pk.integer(k * MERSENNE) + pk.none() for k in range(1, keys + 1))
    for name, body in {"dict": b"}(" + pairs + b"u",
                       "setitem": b"}" + b"".join(pk.integer(k * MERSENNE) + pk.none() + b"s"
                                                  for k in range(1, keys + 1)),
                       "frozenset": b"(" + b"".join(pk.integer(k * MERSENNE) for k in range(1, keys + 1)) + b"\x91"}.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(pk.proto(body, 4))
        proc = _limited_cli("convert", path, tmp_path / f"out-{name}", cwd=tmp_path)
        assert_clean_failure(proc, "hash")
    # ordinary int keys are not affected
    from convert.model.collisions import check_keys

    check_keys(range(1_000_000), "ints")
    check_keys([(i, i + 1) for i in range(100_000)], "pairs")


def test_dict_keys_that_all_hash_alike_are_refused_in_the_loader(tmp_path):
    import json

    out = tmp_path / "folder"
    convert_checkpoint_value({"w": torch.ones(2), "meta": {"a": 1}}, tmp_path / "src.pt", out)
    sidecar_path = out / "checkpoint.json"
    text = sidecar_path.read_text()
    pairs = [[{"$int": hex(k * MERSENNE)}, None] for k in range(1, 50_001)]
    assert '{"a":1}' in text
    sidecar_path.write_text(text.replace('{"a":1}', json.dumps({"$dict": pairs}, separators=(",", ":")), 1))
    script = ("import sys\nfrom convert import load_checkpoint\n"
              "try:\n    load_checkpoint(sys.argv[1])\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    proc = harness.run_limited(["-c", script, str(out)], timeout=300, cwd=tmp_path)
    assert "MalformedCheckpoint" in proc.stdout and "hash" in proc.stdout, (proc.stdout, proc.stderr[-2000:])


def convert_checkpoint_value(value: object, src: Path, out: Path) -> None:
    torch.save(value, src)
    convert_checkpoint(src, out)


def test_a_sidecar_naming_a_quantized_dtype_is_refused_at_load(tmp_path):
    from convert.errors import MalformedCheckpoint

    out = tmp_path / "folder"
    base = torch.arange(8, dtype=torch.int8)
    convert_checkpoint_value({"list": [base, base[2:5]]}, tmp_path / "src.pt", out)  # views: the sidecar's tensors table
    sidecar_path = out / "checkpoint.json"
    text = sidecar_path.read_text()
    assert '"dtype":"int8"' in text
    sidecar_path.write_text(text.replace('"dtype":"int8"', '"dtype":"qint8"'))
    with pytest.raises(MalformedCheckpoint, match="qint8"):
        load_checkpoint(out)


def test_metadata_that_calls_a_dataclass_without_its_fields_is_refused(tmp_path):
    """`Metadata()` by REDUCE: pickle.load raises (required field), so dcp.load would fall back; the reader refuses."""
    folder = _dcp(tmp_path)
    raw = (folder / ".metadata").read_bytes()
    newobj = b"\x93\x94)\x81"  # STACK_GLOBAL, MEMOIZE, EMPTY_TUPLE, NEWOBJ: how dataclasses are pickled
    first = raw.index(newobj)  # the outermost object: Metadata
    assert raw[:first].endswith(b"Metadata\x94")
    patched = raw[:first] + b"\x93\x94)R" + raw[first + len(newobj):]  # the same, called: Metadata()
    (folder / ".metadata").write_bytes(patched)
    with pytest.raises(TypeError):
        pickle.loads(patched)
    err = assert_dcp_refused(folder, tmp_path, code=2)
    assert "required fields" in err
