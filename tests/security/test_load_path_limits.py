"""Load-path limits (issue 16): hostile converted folders are refused quickly, in one line, never with
MemoryError or RecursionError; legitimately deep checkpoints still convert and load.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convert import ConvertError, MalformedCheckpoint, convert_checkpoint, load_checkpoint
from convert.load import read_sidecar
from convert.sidecar.schema import (
    LOCATE_SECONDS,
    MAX_SIDECAR_BYTES,
    MAX_SIDECAR_DEPTH,
    SIDECAR_BASE_BYTES,
    SIDECAR_BYTES_PER_HEADER_BYTE,
    sidecar_allowance,
    validate,
)
from tests.helpers import REPO_ROOT


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.arange(6.0), "b": torch.ones(2)}, src)
    convert_checkpoint(src, tmp_path / "out")
    return tmp_path / "out"


def _header_bytes(folder: Path) -> int:
    return sum(int.from_bytes(p.read_bytes()[:8], "little") for p in folder.glob("*.safetensors"))


def test_allowance_is_proportionate_to_the_safetensors_headers(folder):
    expected = SIDECAR_BASE_BYTES + SIDECAR_BYTES_PER_HEADER_BYTE * _header_bytes(folder)
    assert sidecar_allowance(folder) == expected
    assert (folder / "checkpoint.json").stat().st_size < expected


def test_sidecar_just_inside_the_allowance_loads_just_over_is_refused(folder):
    path = folder / "checkpoint.json"
    text = path.read_bytes().rstrip()
    allowance = sidecar_allowance(folder)
    path.write_bytes(text + b" " * (allowance - len(text)))  # whitespace: still the same JSON
    assert torch.equal(load_checkpoint(folder)["w"], torch.arange(6.0))
    path.write_bytes(text + b" " * (allowance - len(text) + 1))
    with pytest.raises(MalformedCheckpoint, match=f"more than the {allowance} bytes"):
        load_checkpoint(folder)


def test_huge_sidecar_of_zeros_is_refused_in_well_under_two_seconds(folder):
    """The reproduction: a 500 MB sidecar of a list of zeros ran 252 s and ended in a bare MemoryError.

    Written sparse (a prefix of "[0,0,..." and a hole): cheap to make, as big as the original on stat."""
    path = folder / "checkpoint.json"
    with open(path, "wb") as f:
        f.write(b"[" + b"0," * 1_000_000)
        f.truncate(500 << 20)
    start = time.perf_counter()
    with pytest.raises(MalformedCheckpoint, match=r"more than the .* bytes its safetensors files allow"):
        load_checkpoint(folder)
    assert time.perf_counter() - start < 2.0


def test_sidecar_100x_its_allowance_is_refused_without_reading_it(folder, monkeypatch):
    path = folder / "checkpoint.json"
    with open(path, "wb") as f:
        f.truncate(100 * sidecar_allowance(folder) if 100 * sidecar_allowance(folder) < (8 << 30) else MAX_SIDECAR_BYTES + 1)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the sidecar was read"))
    start = time.perf_counter()
    with pytest.raises(MalformedCheckpoint, match="refusing"):
        read_sidecar(folder)
    assert time.perf_counter() - start < 2.0


def test_padded_headers_cannot_lift_the_hard_cap(folder, tmp_path):
    big = folder / "extra.safetensors"
    big.write_bytes((1 << 40).to_bytes(8, "little"))  # claims a terabyte of header
    assert sidecar_allowance(folder) == MAX_SIDECAR_BYTES


def test_list_of_zeros_within_the_cap_is_refused_quickly(folder):
    path = folder / "checkpoint.json"
    path.write_bytes(b"[" + b"0," * 5_000_000 + b"0]")  # 10 MB: parsed, but a list is not a sidecar
    start = time.perf_counter()
    with pytest.raises(MalformedCheckpoint, match="sidecar is a JSON list, not an object"):
        load_checkpoint(folder)
    assert time.perf_counter() - start < 10.0  # linear: no repr of the value in the message


def _nested_root(folder: Path, depth: int) -> None:
    """Add a property holding `depth` nested lists to an otherwise valid sidecar (the schema refuses it)."""
    text = (folder / "checkpoint.json").read_text().rstrip()
    (folder / "checkpoint.json").write_text(text[:-1] + ', "deep": ' + "[" * depth + "0" + "]" * depth + "}")


@pytest.mark.parametrize("depth", [250, 500, 990, 2000, 100_000])
def test_deeply_nested_sidecars_fail_cleanly(folder, depth):
    """Nesting 250-990 deep gave a raw RecursionError from the jsonschema re-check."""
    _nested_root(folder, depth)
    with pytest.raises(MalformedCheckpoint) as err:
        load_checkpoint(folder)
    message = str(err.value)
    assert "\n" not in message
    if depth > MAX_SIDECAR_DEPTH:
        assert "nest" in message
    else:
        assert "does not match the schema at <root>: has the unexpected property 'deep'" in message  # located at depth


@pytest.mark.parametrize("depth", [300, 900])
def test_deep_valid_root_is_validated_without_recursion_error(folder, depth):
    sidecar = json.loads((folder / "checkpoint.json").read_text())
    sidecar["root"] = {"$tuple": []}
    for _ in range(depth // 2):
        sidecar["root"] = {"$tuple": [sidecar["root"]]}
    validate(sidecar, "x")  # valid: no exception (before: RecursionError from the compiled check, then jsonschema)
    bad = sidecar
    inner = bad["root"]
    while inner["$tuple"]:
        inner = inner["$tuple"][0]
    inner["$tuple"] = [{"$nosuchtag": 1}]
    start = time.perf_counter()
    with pytest.raises(MalformedCheckpoint, match="does not match the schema"):
        validate(bad, "x")  # too deep for jsonschema (exponential here): the compiled validator locates it
    assert time.perf_counter() - start < LOCATE_SECONDS + 20


def test_locating_the_error_is_bounded_in_time():
    """An invalid value 14 levels deep: jsonschema alone ran for minutes (every anyOf branch, a repr each)."""
    from convert.sidecar.schema import schema

    root: dict = {"$tuple": [{"$nosuchtag": 1}]}
    for _ in range(14):
        root = {"$tuple": [root, root]}
    sidecar = {k: v for k, v in _minimal_sidecar().items()}
    sidecar["root"] = root
    assert "root" in schema()["properties"]
    start = time.perf_counter()
    with pytest.raises(MalformedCheckpoint, match="does not match the schema"):
        validate(sidecar, "x")
    assert time.perf_counter() - start < LOCATE_SECONDS + 20


def _minimal_sidecar() -> dict:
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    torch.save({"w": torch.ones(1)}, tmp / "m.pt")
    convert_checkpoint(tmp / "m.pt", tmp / "out")
    return json.loads((tmp / "out" / "checkpoint.json").read_text())


@pytest.mark.parametrize("kind", ["dict", "odict", "list"])
def test_legitimately_deep_checkpoints_convert_and_load(tmp_path, kind):
    """A checkpoint nesting 150 containers (within the reader's limit) round-trips: the writer's own
    validation of its sidecar used to die with RecursionError at this depth."""
    value: object = {"t": torch.arange(3.0)}
    for _ in range(150):
        value = {"k": value} if kind == "dict" else collections.OrderedDict(k=value) if kind == "odict" else [value]
    torch.save(value, tmp_path / "deep.pt")
    convert_checkpoint(tmp_path / "deep.pt", tmp_path / "out")
    loaded = load_checkpoint(tmp_path / "out")
    for _ in range(150):
        loaded = loaded[0] if kind == "list" else loaded["k"]
    assert torch.equal(loaded["t"], torch.arange(3.0))


def test_deep_sidecar_in_a_thread_with_a_small_stack(folder):
    """Deep input is parsed, validated and decoded with explicit stacks: a caller's small thread stack is no limit."""
    import threading

    _nested_root(folder, 900)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_checkpoint(folder)
        except BaseException as exc:
            errors.append(exc)
    old = threading.stack_size(1 << 20)
    try:
        t = threading.Thread(target=load)
        t.start()
    finally:
        threading.stack_size(old)
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], ConvertError), errors


@pytest.mark.parametrize("depth", [990, 1_000_000])
def test_cli_reports_hostile_sidecar_in_one_line(folder, depth):
    _nested_root(folder, depth)
    done = subprocess.run([sys.executable, "-m", "convert", "inspect", str(folder)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "malformed" in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_convert_refuses_what_load_would_refuse(tmp_path):
    """A checkpoint whose non-tensor part alone is over the allowance: refused at convert, nothing written."""
    from convert import UnsupportedValue

    torch.save({"w": torch.ones(2), "blob": "x" * 2 * SIDECAR_BASE_BYTES}, tmp_path / "big.pt")
    with pytest.raises(UnsupportedValue, match=r"not written.*more than the"):
        convert_checkpoint(tmp_path / "big.pt", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]


# ----------------------------------------------------------------- deep sidecars, iteratively (no limit raised)

def _tuple_chain(levels: int, leaf: str) -> str:
    return '{"$tuple": [' * levels + leaf + "]}" * levels


def _deep_folder(folder: Path, leaf: str) -> None:
    """Put beside the tensors a value nested 498 tuples deep, ending in `leaf`: with leaf "[[]]" the sidecar
    nests exactly MAX_SIDECAR_DEPTH JSON levels (object, root, 2 per tuple, 2 lists) and 500 codec levels."""
    sidecar = json.loads((folder / "checkpoint.json").read_text())
    sidecar["root"]["deep"] = "HERE"
    text = json.dumps(sidecar).replace('"HERE"', _tuple_chain(498, leaf))  # json.dumps itself would recurse
    (folder / "checkpoint.json").write_text(text)


def test_sidecar_at_the_json_depth_limit_loads_and_one_level_more_is_refused(folder):
    from convert.sidecar.deep import json_depth
    from convert.sidecar.jsonio import strict_json

    original = (folder / "checkpoint.json").read_text()
    _deep_folder(folder, "[[]]")
    assert json_depth(strict_json((folder / "checkpoint.json").read_bytes(), "x"), 10**6) == MAX_SIDECAR_DEPTH
    loaded = load_checkpoint(folder)
    assert torch.equal(loaded["w"], torch.arange(6.0)) and torch.equal(loaded["b"], torch.ones(2))
    value = loaded["deep"]
    for _ in range(498):  # equal to the value the chain stands for, compared without recursion
        assert type(value) is tuple and len(value) == 1
        value = value[0]
    assert value == [[]]

    (folder / "checkpoint.json").write_text(original)
    _deep_folder(folder, "[[[]]]")
    with pytest.raises(MalformedCheckpoint) as err:
        load_checkpoint(folder)
    assert str(err.value) == f"checkpoint.json: JSON nests deeper than {MAX_SIDECAR_DEPTH} levels; refusing"


def test_inspect_and_compare_a_maximally_deep_folder(folder, capsys):
    """inspect rendered the tree one Python call per level and compare_trees compared likewise: exit 70
    (RecursionError) and 'nests too deeply to compare' on a folder load_checkpoint accepts."""
    from convert import compare_trees
    from convert.cli import main

    original = (folder / "checkpoint.json").read_text()
    _deep_folder(folder, "[[]]")
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count("tuple (1 item)") == 498 and out.rstrip().endswith("0: list (0 items)")
    assert compare_trees(load_checkpoint(folder), load_checkpoint(folder)) == []
    diffs = compare_trees(load_checkpoint(folder), {**load_checkpoint(folder), "deep": ()})
    assert diffs == ["deep: length 1 != 0"]

    (folder / "checkpoint.json").write_text(original)  # a chain as deep as a mapping's key: shown, not repr'd
    sidecar = json.loads(original)
    sidecar["root"]["deep"] = "HERE"
    (folder / "checkpoint.json").write_text(json.dumps(sidecar).replace(
        '"HERE"', '{"$dict": [[' + _tuple_chain(497, "1") + ", 2]]}"))
    assert list(load_checkpoint(folder)["deep"].values()) == [2]
    assert main(["inspect", str(folder)]) == 0
    assert "    deep: dict (1 item)\n      <a key nested deeper than 20 levels>: 2" in capsys.readouterr().out

def test_loading_a_maximally_deep_folder_never_touches_the_recursion_limit(folder, monkeypatch):
    """The limit is process-wide on Python 3.11: raising it, even briefly, takes RecursionError's protection
    from the user's other threads (a training loop would crash the interpreter instead)."""
    import threading

    _deep_folder(folder, "[[]]")
    calls: list[int] = []
    monkeypatch.setattr(sys, "setrecursionlimit", calls.append)
    limit = sys.getrecursionlimit()
    seen: set[int] = set()
    done = threading.Event()

    def sample() -> None:  # another thread of the same process, as a data loader would be
        while not done.is_set():
            seen.add(sys.getrecursionlimit())
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(3):
            assert load_checkpoint(folder)["deep"] is not None
    finally:
        done.set()
        sampler.join()
    assert calls == [] and seen == {limit} and sys.getrecursionlimit() == limit


def test_a_depth_bomb_is_one_line_without_recursion_error(folder):
    _nested_root(folder, 1_000_000)
    with pytest.raises(MalformedCheckpoint) as err:
        read_sidecar(folder)
    assert str(err.value) == f"checkpoint.json: JSON nests deeper than {MAX_SIDECAR_DEPTH} levels; refusing"
    assert not isinstance(err.value.__context__, RecursionError)


def test_deep_json_parses_as_json_would_and_fails_with_its_messages():
    from convert.sidecar.jsonio import strict_json

    inner = '[1, {"x": [2, 3, {"y": null}], "z": "q\\u00e9"}, true, -1.5e3, {}, []]'
    value = strict_json(("[" * 980 + inner + "]" * 980).encode(), "x")  # too deep for the C parser alone
    for _ in range(980):
        assert type(value) is list and len(value) == 1
        value = value[0]
    assert value == json.loads(inner)
    bad = {b"1 2": "Expecting ',' delimiter", b'{"a" 1}': "Expecting ':' delimiter", b"{1: 2}": "Expecting property name",
           b"[1] x": "Expecting ',' delimiter", b"[NaN]": "JSON literal NaN is not allowed",
           b'{"a": 1, "a": 2}': "duplicate key 'a'", b"[,]": "Expecting value"}
    for text, message in bad.items():
        for raw in (b"[" * 3 + text + b"]" * 3, b"[" * 1200 + text + b"]" * 1200):  # the same, deep or not
            with pytest.raises(MalformedCheckpoint, match=re.escape(message)):
                strict_json(raw, "x")


def test_deep_valid_sidecar_is_refused_with_the_compiled_validators_located_message(folder):
    sidecar = json.loads((folder / "checkpoint.json").read_text())
    sidecar["root"] = {"$tuple": []}
    for _ in range(450):
        sidecar["root"] = {"$tuple": [sidecar["root"], 1]}
    inner = sidecar["root"]
    while inner["$tuple"]:
        inner = inner["$tuple"][0]
    inner["$tuple"] = [{"$tensor": "not-a-tensor-id"}]
    with pytest.raises(MalformedCheckpoint) as err:
        validate(sidecar, "x")
    where = "root/" + "$tuple/0/" * 451 + "$tensor"
    assert str(err.value) == f"x: sidecar does not match the schema at {where[:200]}: does not match '^t[0-9]+$'"
