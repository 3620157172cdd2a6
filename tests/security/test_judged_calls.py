"""getattr attribute references, _load_from_bytes blobs and salvage: where the line between inert and refused runs.

Every payload that would run code is proven live first: unpickled by pickle.load in a subprocess, it writes a
marker file. Then the reader refuses it (UnsafeCheckpoint), `scan` says unsafe, and salvage converts it without
the marker ever appearing.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings

import pytest
import torch

from convert import convert_checkpoint, load_checkpoint, read_checkpoint
from convert.errors import MalformedCheckpoint, UnsafeCheckpoint
from convert.model.records import ObjectRecord
from convert.read.vm import MAX_NESTED_BLOBS
from convert.scan import scan_file
from convert.scan.verdicts import SAFE, SUSPICIOUS, UNSAFE, classify_global
from tests.helpers import assert_equivalent, read_sidecar, validate_sidecar
from tests.security import pk

MARKER = "pwned_marker"


def _touch() -> bytes:
    return pk.text(f"touch {MARKER}")


LOAD = "import pickle, time\ntry:\n    pickle.load(open('p.pkl', 'rb'))\nexcept Exception:\n    pass\ntime.sleep(0.5)"


def _live(tmp_path, payload: bytes) -> bool:
    """True if pickle.load of `payload` (in a fresh interpreter, cwd tmp_path) writes the marker file
    (a spawned child is given half a second; the load may fail after the payload ran)."""
    work = tmp_path / "live"
    work.mkdir(exist_ok=True)
    (work / MARKER).unlink(missing_ok=True)
    (work / "p.pkl").write_bytes(payload)
    subprocess.run([sys.executable, "-c", LOAD], cwd=work, capture_output=True, timeout=60)
    alive = (work / MARKER).exists()
    (work / MARKER).unlink(missing_ok=True)
    return alive


OS_VIA_ARGPARSE = pk.glob("argparse", "_os")  # the os module, under a name no denylist knows
LIVE_PAYLOADS = {
    # getattr on a harmless-looking global that is the os module, called
    "getattr_os_system": pk.call(pk.attr(OS_VIA_ARGPARSE, "system"), _touch()),
    # a chain: argparse._os.path.os.system
    "getattr_chain": pk.call(pk.attr(pk.attr(pk.attr(OS_VIA_ARGPARSE, "path"), "os"), "system"), _touch()),
    # getattr(builtins, "exec") reached through codecs.builtins
    "getattr_builtins_exec": pk.call(pk.attr(pk.glob("codecs", "builtins"), "exec"),
                                     pk.text(f"open({MARKER!r}, 'w').close()")),
    # the getattr result never called by the pickle, but passed to a builtin that calls it while dict() consumes it
    "getattr_through_starmap": pk.call(pk.glob("builtins", "dict"), pk.call(
        pk.glob("itertools", "starmap"), pk.attr(OS_VIA_ARGPARSE, "posix_spawnp"),
        pk.lst(pk.tup(pk.text("touch"), pk.lst(pk.text("touch"), pk.text(MARKER)), pk.dct())))),
    # the same, the reference one list deeper: chain.from_iterable(map(starmap, [f], [[job]]))
    "getattr_nested_in_arguments": pk.call(pk.glob("builtins", "dict"), pk.call(
        pk.glob("itertools", "chain.from_iterable"),
        pk.call(pk.glob("builtins", "map"), pk.glob("itertools", "starmap"),
                pk.lst(pk.attr(OS_VIA_ARGPARSE, "posix_spawnp")),
                pk.lst(pk.lst(pk.tup(pk.text("touch"), pk.lst(pk.text("touch"), pk.text(MARKER)), pk.dct())))))),
    # the getattr result stored first, then fetched from the memo and called
    "getattr_memo_then_call": pk.lst(pk.attr(OS_VIA_ARGPARSE, "system") + pk.put(1)) + pk.pop()
                              + pk.call(pk.get(1), _touch()),
}


@pytest.mark.parametrize("name", sorted(LIVE_PAYLOADS))
def test_live_getattr_payloads_are_refused_and_never_run(tmp_path, name):
    payload = pk.proto(LIVE_PAYLOADS[name], 4)
    assert _live(tmp_path, payload), "the payload must be live for the test to mean anything"
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(path)
    assert scan_file(path).verdict == UNSAFE
    convert_checkpoint(path, tmp_path / "salvaged", salvage=True)  # salvage: converted, nothing runs
    assert not (tmp_path / MARKER).exists() and not list(tmp_path.rglob(MARKER))
    source = read_sidecar(tmp_path / "salvaged")["source"]
    assert source["salvaged"] is True and source["neutralised_calls"]


ATTR = pk.attr(pk.glob("collections", "OrderedDict"), "fromkeys")  # a harmless attribute of a harmless class
REFUSED_USES = {
    "called": pk.call(ATTR, pk.lst(pk.text("a"))),
    "newobj_class": ATTR + pk.tup() + b"\x81",
    "build_target": pk.build(ATTR, pk.dct((pk.text("x"), pk.integer(1)))),
    "setitems_target": ATTR + pk.text("k") + pk.integer(1) + b"s",
    "reconstructor_argument": pk.call(pk.glob("copyreg", "_reconstructor"), ATTR, pk.glob("builtins", "object"),
                                      pk.none()),
    "dunder_name": pk.attr(pk.glob("collections", "OrderedDict"), "__init__"),
    "three_arguments": pk.call(pk.glob("builtins", "getattr"), pk.glob("collections", "OrderedDict"),
                               pk.text("nope"), pk.none()),
    "non_string_name": pk.call(pk.glob("builtins", "getattr"), pk.glob("collections", "OrderedDict"), pk.integer(1)),
    "target_not_a_global": pk.attr(pk.dct(), "update"),
    "gadget_attribute_of_innocent_class": pk.attr(pk.glob("pathlib", "Path"), "write_text"),
    "getattr_of_getattr": pk.attr(pk.glob("builtins", "getattr"), "x"),
    # passed (at any depth) to a call that could call it: map/starmap/chain consumed by dict
    "argument_of_a_call": pk.call(pk.glob("builtins", "dict"), pk.call(pk.glob("itertools", "starmap"), ATTR,
                                                                       pk.lst(pk.tup(pk.text("a"))))),
    "argument_nested_in_lists": pk.call(pk.glob("builtins", "map"), pk.glob("itertools", "starmap"),
                                        pk.lst(pk.lst(pk.dct((pk.text("k"), ATTR))))),
    "partial_as_argument": pk.call(pk.glob("builtins", "map"), pk.call(pk.glob("functools", "partial"),
                                                                       pk.glob("collections", "OrderedDict")),
                                   pk.lst()),
    "partial_of_a_non_callable": pk.call(pk.glob("functools", "partial"), pk.integer(3)),
    "getattr_instantiated": pk.glob("builtins", "getattr") + pk.tup() + b"\x81",
}


@pytest.mark.parametrize("name", sorted(REFUSED_USES))
def test_getattr_used_as_anything_but_an_inert_reference_is_refused(tmp_path, name):
    path = tmp_path / "x.pkl"
    path.write_bytes(pk.proto(pk.dct((pk.text("v"), REFUSED_USES[name])), 4))
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(path)
    assert scan_file(path).verdict == UNSAFE


def test_inert_attribute_reference_is_kept_written_and_loaded_back(tmp_path):
    path = tmp_path / "ref.pkl"
    body = pk.dct((pk.text("method"), ATTR), (pk.text("again"), pk.attr(pk.glob("collections", "OrderedDict"), "fromkeys")),
                  (pk.text("n"), pk.integer(3)))
    path.write_bytes(pk.proto(body, 4))
    live = pickle.loads(path.read_bytes())
    assert callable(live["method"]) and live["method"].__name__ == "fromkeys"  # what pickle gives: the method
    got = read_checkpoint(path)
    assert isinstance(got["method"], ObjectRecord) and got["method"].via == "getattr"
    assert got["method"].qualname == "collections.OrderedDict.fromkeys" and got["n"] == 3
    report = scan_file(path)
    assert report.verdict == SUSPICIOUS
    assert {f.category for f in report.findings if f.name == "builtins.getattr"} == {"attribute-reference"}
    convert_checkpoint(path, tmp_path / "out")
    validate_sidecar(read_sidecar(tmp_path / "out"))
    loaded = load_checkpoint(tmp_path / "out")
    assert isinstance(loaded["method"], ObjectRecord) and loaded["method"].via == "getattr"
    assert loaded["method"].qualname == "collections.OrderedDict.fromkeys"


def test_scan_does_not_downgrade_getattr_the_reader_did_not_accept(tmp_path):
    path = tmp_path / "mixed.pkl"  # one inert reference, one called: the file is unsafe
    path.write_bytes(pk.proto(pk.dct((pk.text("a"), ATTR), (pk.text("b"), REFUSED_USES["called"])), 4))
    report = scan_file(path)
    assert report.verdict == UNSAFE
    assert any(f.name == "builtins.getattr" and f.verdict == UNSAFE for f in report.findings)


# ------------------------------------------------------------------------------------- _load_from_bytes

def _tensors():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {"w": base, "view": base[1:, ::2], "i": torch.tensor([1, -2, 3], dtype=torch.int64),
            "b": torch.tensor([True, False]), "h": torch.randn(3, dtype=torch.bfloat16),
            "p": torch.nn.Parameter(torch.ones(2, 2)), "shared": [base, base]}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickle_of_tensors_converts_and_loads_equal(tmp_path, protocol):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_tensors(), protocol=protocol))
    assert "torch.storage._load_from_bytes" in scan_file(path).globals
    assert scan_file(path).verdict == SUSPICIOUS  # checked blobs: not a gadget in this file
    convert_checkpoint(path, tmp_path / "out")
    validate_sidecar(read_sidecar(tmp_path / "out"))
    with open(path, "rb") as f:
        reference = pickle.load(f)
    assert_equivalent(load_checkpoint(tmp_path / "out"), reference)


def _legacy_blob(storage) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(storage, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _wrap(blob: bytes) -> bytes:
    """A legacy torch.save file whose main pickle is _load_from_bytes(blob): one more level of nesting."""
    inner = pk.proto(pk.call(pk.glob("torch.storage", "_load_from_bytes"), pk.raw_bytes(blob)), 2)
    head = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2)
    head += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2)
    return head + inner + pickle.dumps([], 2)


def _nested_file(depth: int) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = _legacy_blob(torch.arange(6, dtype=torch.float32).storage())  # a TypedStorage, as Tensor.__reduce__
    for _ in range(depth - 1):
        blob = _wrap(blob)
    storage = pk.call(pk.glob("torch.storage", "_load_from_bytes"), pk.raw_bytes(blob))
    tensor = pk.call(pk.glob("torch._utils", "_rebuild_tensor"), storage, pk.integer(0),
                     pk.tup(pk.integer(6)), pk.tup(pk.integer(1)))
    return pk.proto(pk.dct((pk.text("t"), tensor)), 4)


def test_nested_blobs_are_read_to_a_small_bound(tmp_path):
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(_nested_file(MAX_NESTED_BLOBS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pickle.loads(ok.read_bytes())
    got = read_checkpoint(ok)
    assert torch.equal(got["t"], expected["t"])
    deep = tmp_path / "deep.pkl"
    deep.write_bytes(_nested_file(MAX_NESTED_BLOBS + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pickle.loads(deep.read_bytes())  # torch itself reads it: the bound is ours
    with pytest.raises(MalformedCheckpoint, match="nested"):
        read_checkpoint(deep)


def test_a_gadget_inside_a_blob_is_refused(tmp_path):
    evil_blob = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pk.proto(pk.call(pk.glob("posix", "system"), _touch()), 2)
    payload = pk.proto(pk.call(pk.glob("torch.storage", "_load_from_bytes"), pk.raw_bytes(evil_blob)), 4)
    work = tmp_path / "live"
    work.mkdir()
    (work / "p.pkl").write_bytes(payload)
    subprocess.run([sys.executable, "-c", "import pickle, torch; pickle.load(open('p.pkl', 'rb'))"], cwd=work,
                   capture_output=True, timeout=120)
    assert (work / MARKER).exists()  # live: torch.load runs the blob's first pickle
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system"):
        read_checkpoint(path)
    assert scan_file(path).verdict == UNSAFE


def test_load_from_bytes_of_something_else_is_refused(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pk.proto(pk.call(pk.glob("torch.storage", "_load_from_bytes"), pk.text("not bytes")), 4))
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(path)


# ------------------------------------------------------------------------------------------------ salvage

def test_salvage_keeps_tensors_and_records_what_would_have_run(tmp_path):
    weights = torch.arange(5, dtype=torch.float32)
    payload = pk.dct((pk.text("hook"), pk.call(pk.glob("posix", "system"), _touch())))
    path = tmp_path / "evil.pt"
    torch.save({"w": weights}, path)
    # the weights file as users have it: a torch zip; the payload as a second, plain file
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pk.proto(payload, 4))
    assert _live(tmp_path, evil.read_bytes())
    with pytest.raises(UnsafeCheckpoint):
        convert_checkpoint(evil, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    convert_checkpoint(evil, tmp_path / "out", salvage=True)
    doc = read_sidecar(tmp_path / "out")
    validate_sidecar(doc)
    assert doc["source"]["salvaged"] is True and doc["source"]["neutralised_count"] >= 1
    assert any("posix.system" in c for c in doc["source"]["neutralised_calls"])
    hook = load_checkpoint(tmp_path / "out")["hook"]
    assert isinstance(hook, ObjectRecord) and hook.qualname == "posix.system" and hook.via == "salvaged-call"
    assert hook.args == (f"touch {MARKER}",)
    assert scan_file(evil).verdict == UNSAFE  # salvage changes nothing about the verdict
    assert not list(tmp_path.rglob(MARKER))


def test_salvage_of_a_clean_file_is_an_ordinary_conversion(tmp_path):
    path = tmp_path / "clean.pt"
    torch.save({"w": torch.ones(3)}, path)
    convert_checkpoint(path, tmp_path / "out", salvage=True)
    assert "salvaged" not in read_sidecar(tmp_path / "out")["source"]


def _whole_object_export(tmp_path):
    """A fastai-Learner.export-like file: a class defined in __main__, pickled by value (cloudpickle-style)."""
    cloudpickle = pytest.importorskip("cloudpickle")
    code = f"""
import cloudpickle, torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.fc = torch.nn.Linear(3, 2); self.register_buffer("rm", torch.ones(2))
class Learner:
    def __init__(self):
        self.model = Net(); self.loss_func = lambda a, b: (a - b).abs().mean(); self.lr = 1e-3
        self.opt = {{"step": torch.tensor(3.0)}}
torch.manual_seed(0)
torch.save(Learner(), {str(tmp_path / 'export.pkl')!r}, pickle_module=cloudpickle)
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    del cloudpickle
    return tmp_path / "export.pkl"


def test_salvage_of_a_whole_object_export_gives_the_weights_back(tmp_path):
    path = _whole_object_export(tmp_path)
    assert scan_file(path).verdict == UNSAFE
    with pytest.raises(UnsafeCheckpoint):
        convert_checkpoint(path, tmp_path / "refused")
    convert_checkpoint(path, tmp_path / "out", salvage=True)
    validate_sidecar(read_sidecar(tmp_path / "out"))
    got = load_checkpoint(tmp_path / "out")
    import cloudpickle  # noqa: F401  (the reference: the file loaded by the code it names)
    live = torch.load(path, weights_only=False)
    model_state = got.state["model"]
    assert_equivalent(model_state, live.model.state_dict())
    assert torch.equal(got.state["opt"]["step"], live.opt["step"]) and got.state["lr"] == live.lr
    assert isinstance(got.state["loss_func"], ObjectRecord)  # the lambda: a record of what would have been built


# ---------------------------------------------------------------------------------------- scan categories

CATEGORY_TABLE = [
    ("inspect", "Signature", SAFE, "data-class"),
    ("inspect", "Parameter", SAFE, "data-class"),
    ("inspect", "_ParameterKind", SAFE, "data-class"),
    ("inspect", "_empty", SAFE, "data-class"),
    ("builtins", "print", SUSPICIOUS, "custom-class"),
    ("torch.utils.data", "DataLoader", SUSPICIOUS, "custom-class"),
    ("torch.utils.data.dataloader", "DataLoader", SUSPICIOUS, "custom-class"),
    # the line stays where it was for what can really act
    ("inspect", "getsource", UNSAFE, "exec"),
    ("builtins", "getattr", UNSAFE, "exec"),  # as a name; the reader judges each call (attribute-reference)
    ("torch.storage", "_load_from_bytes", UNSAFE, "nested-loader"),
    ("builtins", "input", UNSAFE, "process"),
    ("torch.utils.data.datapipes.utils.decoder", "basichandlers", UNSAFE, "exec"),
    ("torch.utils.data", "DataLoader.__init__", UNSAFE, "exec"),
]


@pytest.mark.parametrize("module,name,verdict,category", CATEGORY_TABLE)
def test_scan_categories_by_what_a_call_can_do(module, name, verdict, category):
    assert classify_global(module, name) == (verdict, category)


def test_a_salvaged_folder_verifies_against_its_source(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pk.proto(pk.dct((pk.text("w"), pk.call(pk.glob("builtins", "list"), pk.lst(pk.integer(1)))),
                                     (pk.text("hook"), pk.call(pk.glob("posix", "system"), _touch()))), 4))
    convert_checkpoint(evil, tmp_path / "out", salvage=True)
    from convert import verify_checkpoint

    assert verify_checkpoint(evil, tmp_path / "out") == []
    assert not list(tmp_path.rglob(MARKER))


def test_cli_salvage_flag(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pk.proto(pk.dct((pk.text("hook"), pk.call(pk.glob("posix", "system"), _touch()))), 4))
    cli = [sys.executable, "-m", "convert", "convert"]
    refused = subprocess.run([*cli, str(evil), str(tmp_path / "a")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.startswith("ckpt-convert: refused:")
    salvaged = subprocess.run([*cli, "--salvage", str(evil), str(tmp_path / "b")], capture_output=True, text=True,
                              timeout=120)
    assert salvaged.returncode == 0, salvaged.stderr
    assert read_sidecar(tmp_path / "b")["source"]["salvaged"] is True and not (tmp_path / "a").exists()
    shown = subprocess.run([sys.executable, "-m", "convert", "inspect", str(tmp_path / "b")], capture_output=True,
                           text=True, timeout=120)
    assert "salvaged call of posix.system (not run)" in shown.stdout and "salvaged: 1 call(s)" in shown.stdout
    assert not list(tmp_path.rglob(MARKER))


def test_salvage_of_a_hand_built_function_export(tmp_path):
    """Without cloudpickle: a pickle that rebuilds a function from code (types.CodeType + types.FunctionType)
    next to a tensor, as whole-object exports do. Salvage records the calls and gives the tensor back."""
    code = pk.call(pk.glob("types", "CodeType"), *(pk.integer(0) for _ in range(6)), pk.raw_bytes(b"d\x00S\x00"),
                   pk.tup(pk.none()), pk.tup(), pk.tup(), pk.text("x.py"), pk.text("f"), pk.text("f"),
                   pk.integer(1), pk.raw_bytes(b""), pk.raw_bytes(b""), pk.tup(), pk.tup())
    function = pk.call(pk.glob("types", "FunctionType"), code, pk.dct())
    tensor_file = _nested_file(1)  # {"t": tensor} through _load_from_bytes
    body = pk.dct((pk.text("fn"), function), (pk.text("t"), tensor_file[2:-1]))
    path = tmp_path / "export.pkl"
    path.write_bytes(pk.proto(body, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pickle.loads(tensor_file)
        if sys.version_info[:2] == (3, 11):  # CodeType's arguments are 3.11's: there the file really builds it
            live = pickle.loads(path.read_bytes())
            assert callable(live["fn"]) and live["fn"]() is None
    with pytest.raises(UnsafeCheckpoint):
        read_checkpoint(path)
    convert_checkpoint(path, tmp_path / "out", salvage=True)
    got = load_checkpoint(tmp_path / "out")
    assert torch.equal(got["t"]["t"], reference["t"])
    assert got["fn"].qualname == "types.FunctionType" and got["fn"].via == "salvaged-call"
    assert got["fn"].args[0].qualname == "types.CodeType"
    calls = read_sidecar(tmp_path / "out")["source"]["neutralised_calls"]
    assert any("types.CodeType" in c for c in calls) and any("types.FunctionType" in c for c in calls)


def test_sarif_has_rules_for_the_judged_categories(tmp_path):
    import json
    from pathlib import Path

    import jsonschema

    from convert.scan.output import to_sarif

    ref = tmp_path / "ref.pkl"
    ref.write_bytes(pk.proto(pk.dct((pk.text("m"), ATTR),
                                    (pk.text("p"), pk.call(pk.glob("functools", "partial"),
                                                           pk.glob("collections", "OrderedDict")))), 4))
    blobs = tmp_path / "blobs.pkl"
    blobs.write_bytes(pickle.dumps({"t": torch.ones(2)}))
    reports = [scan_file(ref), scan_file(blobs)]
    assert [r.verdict for r in reports] == [SUSPICIOUS, SUSPICIOUS]
    log = json.loads(json.dumps(to_sarif(reports)))
    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
    assert not list(jsonschema.Draft4Validator(schema).iter_errors(log))
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    got = {rules[r["ruleIndex"]]["id"] for r in log["runs"][0]["results"]}
    assert {"ckpt-scan/attribute-reference", "ckpt-scan/stored-partial", "ckpt-scan/nested-torch-blob"} <= got
    assert {r["level"] for r in log["runs"][0]["results"]} == {"warning"}


@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_salvage_of_cloudpickle_at_every_protocol(tmp_path, protocol):
    pytest.importorskip("cloudpickle")
    path = tmp_path / "obj.pkl"
    code = f"""
import cloudpickle, torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.fc = torch.nn.Linear(3, 2)
torch.manual_seed(0)
open({str(path)!r}, "wb").write(cloudpickle.dumps({{"model": Net(), "f": lambda x: x + 1}}, protocol={protocol}))
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert scan_file(path).verdict == UNSAFE
    convert_checkpoint(path, tmp_path / "out", salvage=True)
    got = load_checkpoint(tmp_path / "out")
    live = pickle.loads(path.read_bytes())  # our own file: the reference may run its code
    assert_equivalent(got["model"], live["model"].state_dict())
    assert isinstance(got["f"], ObjectRecord) and got["f"].via == "salvaged-call"
