"""`load_checkpoint` treats a converted folder as untrusted: every corruption is one clear error and
nothing outside the folder is ever opened.

Each case starts from a real converted folder and breaks one thing. All cases are loaded in one
memory-limited child with an audit hook recording every file it opens.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from convert import convert_checkpoint
from tests.security import harness

SIDECAR = "checkpoint.json"

LOAD_DRIVER = r"""
import json, os, sys
import torch
from convert import load_checkpoint, ConvertError
cases = json.loads(open(sys.argv[1]).read())
good = sys.argv[2]
for mmap in (True, False):
    load_checkpoint(good, mmap=mmap)  # warm-up: lazy imports and the schema are read before watching
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))
sys.addaudithook(hook)

def touch(value):
    if isinstance(value, torch.Tensor):
        value.sum()
    elif isinstance(value, dict):
        [touch(v) for v in value.values()]
    elif isinstance(value, (list, tuple)):
        [touch(v) for v in value]

for case in cases:
    for mmap in (True, False):
        opened.clear()
        try:
            touch(load_checkpoint(case["folder"], mmap=mmap))
            outcome = {"result": "loaded"}
        except ConvertError as exc:
            outcome = {"result": type(exc).__name__, "message": str(exc)}
        except BaseException as exc:
            outcome = {"result": "crash", "message": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"name": case["name"], "mmap": mmap, "opened": list(opened), **outcome}), flush=True)
"""


# ------------------------------------------------------------------------------- file surgery

def read_st(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path: Path, header: dict | bytes, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def entries(header: dict) -> list[str]:
    """Tensor keys in data order."""
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def edit_header(edit: Callable[[dict, bytes], tuple[dict | bytes, bytes] | None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = _main_file(folder)
        header, data = read_st(path)
        result = edit(header, data)
        write_st(path, *(result or (header, data)))
    return apply


def edit_sidecar(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        sidecar = json.loads((folder / SIDECAR).read_text())
        result = edit(sidecar)
        (folder / SIDECAR).write_text(json.dumps(result if result is not None else sidecar))
    return apply


def _main_file(folder: Path) -> Path:
    return max(folder.glob("*.safetensors"), key=lambda p: p.stat().st_size)


def _overlap(h: dict, d: bytes) -> None:
    a, b = entries(h)[:2]
    h[b]["data_offsets"] = h[a]["data_offsets"]


def _out_of_range(h: dict, d: bytes) -> None:
    k = entries(h)[-1]
    h[k]["data_offsets"] = [h[k]["data_offsets"][0], len(d) + 64]


def _negative(h: dict, d: bytes) -> None:
    k = entries(h)[0]
    h[k]["data_offsets"] = [-8, h[k]["data_offsets"][1]]


def _hole(h: dict, d: bytes) -> tuple[dict, bytes]:
    last = entries(h)[-1]
    start, end = h[last]["data_offsets"]
    h[last]["data_offsets"] = [start + 8, end + 8]
    return h, d[:start] + b"\0" * 8 + d[start:]


def _shape_mismatch(h: dict, d: bytes) -> None:
    k = entries(h)[0]
    h[k]["shape"] = [s * 2 for s in h[k]["shape"]] or [2]


def _dtype_mismatch(h: dict, d: bytes) -> None:
    k = next(k for k in entries(h) if h[k]["dtype"] in ("F32", "I64", "U8"))
    h[k]["dtype"] = {"F32": "F64", "I64": "I32", "U8": "I16"}[h[k]["dtype"]]


def _bad_dtype(h: dict, d: bytes) -> None:
    h[entries(h)[0]]["dtype"] = "X9"


def _non_utf8(h: dict, d: bytes) -> tuple[bytes, bytes]:
    return json.dumps(h).encode().replace(b"{", b"{\"\xff\xfe\": 1, ", 1), d


def _duplicate_key(h: dict, d: bytes) -> tuple[bytes, bytes]:
    k = entries(h)[0]
    text = json.dumps(h)
    extra = json.dumps({k: h[k]})[1:-1]
    return (text[:-1] + ", " + extra + "}").encode(), d


def _header_size(value: int) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = _main_file(folder)
        raw = bytearray(path.read_bytes())
        raw[:8] = struct.pack("<Q", value if value >= 0 else len(raw))
        path.write_bytes(bytes(raw))
    return apply


def _first_storage(s: dict) -> dict:
    return next(info for info in s["storages"].values() if "file" in info)


def _first_tensor(s: dict) -> dict:
    return next(iter(s["tensors"].values()))


def _storage_with(s: dict, field: str) -> dict:
    return next(info for info in s["storages"].values() if field in info)


def _first_plain(s: dict) -> tuple[str, str]:
    """(file, id) of the first plain tensor (no row, only an entries item)."""
    return next((name, id_) for name, ids in s["entries"].items() for id_ in ids if id_.startswith("t"))


def _set_plain_key(s: dict, key: str) -> None:
    name, id_ = _first_plain(s)
    s["entries"][name][id_] = key


def _plain_in_unlisted_file(s: dict) -> None:
    name, id_ = _first_plain(s)
    s["entries"].setdefault("other.safetensors", {})[id_] = s["entries"][name].pop(id_)


def _plain_listed_twice(s: dict) -> None:
    name, id_ = _first_plain(s)
    other = next(n for n in s["entries"] if n != name)
    s["entries"][other][id_] = s["entries"][name][id_]


def _piece_of_other_storage(s: dict) -> None:
    info = _storage_with(s, "pieces")
    tid = next(t for t, row in s["tensors"].items() if row["storage"] not in
               [sid for sid, i in s["storages"].items() if i is info])
    info["pieces"][0] = tid


def _piece_row(s: dict) -> dict:
    return s["tensors"][_storage_with(s, "rest")["pieces"][0]]


def _clear_tensors(s: dict) -> None:
    s["tensors"].clear()
    s.pop("entries", None)


def _symlink_file_out(folder: Path) -> None:
    path = _main_file(folder)
    outside = folder.parent / f"outside-{folder.name}.safetensors"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)


def _symlink_sidecar_out(folder: Path) -> None:
    outside = folder.parent / f"outside-{folder.name}.json"
    shutil.copy(folder / SIDECAR, outside)
    (folder / SIDECAR).unlink()
    (folder / SIDECAR).symlink_to(outside)


def _symlink_folder_entry(folder: Path) -> None:
    """A relative symlink climbing out with ../ under a legitimate file name."""
    path = _main_file(folder)
    outside = folder.parent / f"outside2-{folder.name}.safetensors"
    shutil.copy(path, outside)
    path.unlink()
    os.symlink(f"../{outside.name}", path)


def _rename_file(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        sidecar = json.loads((folder / SIDECAR).read_text())
        old = _main_file(folder).name
        for table in ("storages", "arrays"):
            for info in sidecar.get(table, {}).values():
                if info.get("file") == old:
                    info["file"] = name
        if old in sidecar["files"]:
            sidecar["files"][name] = sidecar["files"].pop(old)
        (folder / SIDECAR).write_text(json.dumps(sidecar))
    return apply


def _deep_json(folder: Path) -> None:
    text = (folder / SIDECAR).read_text()
    (folder / SIDECAR).write_text(text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _oversize_sidecar(folder: Path) -> None:
    with open(folder / SIDECAR, "r+b") as f:
        f.truncate(1 << 40)  # sparse: a terabyte on paper


CASES: dict[str, Callable[[Path], None]] = {
    "header_size_terabytes": _header_size(1 << 40),
    "header_size_beyond_file": _header_size(-1),
    "header_not_object": edit_header(lambda h, d: (b"[1, 2]", d)),
    "header_nan_literal": edit_header(lambda h, d: (json.dumps(h).encode()[:-1] + b', "x": NaN}', d)),
    "overlapping_offsets": edit_header(_overlap),
    "offsets_out_of_range": edit_header(_out_of_range),
    "negative_offset": edit_header(_negative),
    "hole_between_entries": edit_header(_hole),
    "trailing_bytes": edit_header(lambda h, d: (h, d + b"\0" * 16)),
    "shape_vs_bytes": edit_header(_shape_mismatch),
    "dtype_vs_bytes": edit_header(_dtype_mismatch),
    "unknown_dtype": edit_header(_bad_dtype),
    "header_non_utf8": edit_header(_non_utf8),
    "header_duplicate_key": edit_header(_duplicate_key),
    "sidecar_non_utf8": lambda f: (f / SIDECAR).write_bytes((f / SIDECAR).read_bytes()[:-1] + b', "\xff": 1}'),
    "sidecar_duplicate_key": lambda f: (f / SIDECAR).write_text((f / SIDECAR).read_text()[:-1] + ', "root": null}'),
    "sidecar_fails_schema": edit_sidecar(lambda s: s.pop("root")),
    "sidecar_wrong_types": edit_sidecar(lambda s: _first_tensor(s).update(shape="big")),
    "sidecar_deep_nesting": _deep_json,
    "sidecar_oversize": _oversize_sidecar,
    "missing_tensor_reference": edit_sidecar(_clear_tensors),
    "plain_entry_missing_key": edit_sidecar(lambda s: _set_plain_key(s, "no.such.entry")),
    "plain_entry_unlisted_file": edit_sidecar(_plain_in_unlisted_file),
    "plain_entry_listed_twice": edit_sidecar(_plain_listed_twice),
    "piece_of_other_storage": edit_sidecar(_piece_of_other_storage),
    "piece_missing": edit_sidecar(lambda s: _storage_with(s, "pieces").update(pieces=["t99999"])),
    "piece_outside_storage": edit_sidecar(lambda s: _piece_row(s).update(offset=1 << 40)),
    "piece_overlapping_itself": edit_sidecar(lambda s: _piece_row(s).update(stride=[0])),
    "pieces_hold_too_little": edit_sidecar(lambda s: _storage_with(s, "pieces").update(nbytes=1 << 40)),
    "rest_wrong_size": edit_sidecar(lambda s: _storage_with(s, "rest").update(
        rest=[_storage_with(s, "rest")["rest"][0], _first_storage(s)["key"]])),
    "rest_missing_key": edit_sidecar(lambda s: _storage_with(s, "rest")["rest"].__setitem__(1, "no.such.entry")),
    "missing_storage_reference": edit_sidecar(lambda s: _first_tensor(s).update(storage="s999")),
    "missing_entry_key": edit_sidecar(lambda s: _first_storage(s).update(key="no.such.entry")),
    "view_outside_storage": edit_sidecar(lambda s: _first_tensor(s).update(offset=1 << 40)),
    "storage_size_disagrees": edit_sidecar(lambda s: _first_storage(s).update(nbytes=_first_storage(s)["nbytes"] + 4)),
    "missing_file": lambda f: _main_file(f).unlink(),
    "path_traversal": _rename_file("../outside.safetensors"),
    "absolute_path": _rename_file("/etc/passwd"),
    "symlink_file_out": _symlink_file_out,
    "symlink_relative_out": _symlink_folder_entry,
    "symlink_sidecar_out": _symlink_sidecar_out,
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("load-hostile")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    src = root / "ckpt.pt"
    flat, strided = torch.randn(20), torch.arange(10.0)
    views = {"transposed": torch.randn(3, 5).t(), "flat.a": flat[:6].view(2, 3), "flat.b": flat[6:],
             "strided": strided[::2], "alias": model[0].weight.detach().t()}
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "views": views}, src)
    good = root / "good"
    convert_checkpoint(src, good)
    cases = []
    for name, mutate in CASES.items():
        folder = root / "cases" / name
        shutil.copytree(good, folder)
        mutate(folder)
        cases.append({"name": name, "folder": str(folder)})
    (root / "cases.json").write_text(json.dumps(cases))
    proc = harness.run_limited(["-c", LOAD_DRIVER, str(root / "cases.json"), str(good)], timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {(r["name"], r["mmap"]): r for r in rows}, root


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_folder_is_refused_clearly(outcomes, name):
    rows, root = outcomes
    for mmap in (True, False):
        row = rows[(name, mmap)]
        assert row["result"] == "MalformedCheckpoint", row
        message = row["message"]
        assert message and "\n" not in message and len(message) < 500, row
        folder = os.path.realpath(root / "cases" / name)
        outside = [p for p in row["opened"] if not _inside(folder, p) and not _code(p)]
        assert outside == [], row  # nothing read outside the folder, not even through a symlink


def _inside(folder: str, path: str) -> bool:
    return os.path.commonpath([folder, os.path.realpath(path)]) == folder


def _code(path: str) -> bool:
    """Python's own files (a lazily imported module, the schema): not data from the checkpoint."""
    roots = {sys.prefix, sys.base_prefix, str(harness.REPO_ROOT / "convert")}
    return any(_inside(os.path.realpath(r), path) for r in roots)


def test_untouched_copy_still_loads(tmp_path):
    """The surgery helpers themselves do not break a folder: a no-op edit loads fine."""
    torch.save({"w": torch.arange(6.0)}, tmp_path / "a.pt")
    convert_checkpoint(tmp_path / "a.pt", tmp_path / "good")
    edit_header(lambda h, d: None)(tmp_path / "good")
    from convert import load_checkpoint

    assert torch.equal(load_checkpoint(tmp_path / "good")["w"], torch.arange(6.0))
