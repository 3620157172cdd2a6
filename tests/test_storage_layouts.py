"""Compact sidecar rows and storages written once (issue 11 parts 2 and 3).

Each layout is saved with torch.save, converted and loaded back (lazily and fully): values bit for
bit, tensors that shared a storage share one again, `load_file` of a state-dict file gives the plain
state dict, and the output stays within a bound of the source's storage bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from convert import convert_checkpoint, load_checkpoint
from convert.load.safetensors_reader import SafetensorsFile
from tests.helpers import assert_equivalent, bits, load_reference, same_storage, save

SIDECAR = "checkpoint.json"


def _lstm_flat() -> dict:
    flat = torch.randn(4 * 8 * 5 + 4 * 8 * 8 + 4 * 8 + 4 * 8)
    shapes = [("weight_ih_l0", (32, 5)), ("weight_hh_l0", (32, 8)), ("bias_ih_l0", (32,)), ("bias_hh_l0", (32,))]
    out, at = {}, 0
    for name, shape in shapes:
        n = torch.Size(shape).numel()
        out[name] = flat[at:at + n].view(shape)
        at += n
    return out


def _layouts() -> dict[str, dict]:
    torch.manual_seed(0)
    base, big, emb = torch.randn(6, 8), torch.randn(4096), torch.randn(50, 16)
    return {
        "transposed": {f"l{i}.weight": torch.randn(24, 12).t() for i in range(3)},
        "strided": {"even": base[:, ::2], "odd": base[:, 1::2]},
        "lstm_flat": _lstm_flat(),
        "tied": {"embed.weight": emb, "lm_head.weight": emb.t(), "norm.weight": torch.ones(16)},
        "partial_views": {"head": big[:1024], "window": big[2000:2100]},
        "strided_alone": {"every_other": torch.arange(64.0)[::2]},
        "complex_and_bf16_views": {"c": torch.randn(4, 6, dtype=torch.complex128).t(),
                                   "b": torch.randn(8, 4).to(torch.bfloat16).t()},
        "mixed_dtypes_one_storage": {"f": torch.arange(16.0)[:8], "g": torch.arange(16.0)[8:]},
    }


def _convert(obj: dict, tmp_path: Path, name: str) -> tuple[Path, Path]:
    src = save(obj, tmp_path / f"{name}.pt", "zip")
    dst = tmp_path / f"{name}.out"
    convert_checkpoint(src, dst)
    return src, dst


def _storage_bytes(obj: dict) -> int:
    seen = {}
    for t in obj.values():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("name", list(_layouts()))
def test_layout_roundtrips_with_aliasing_and_each_byte_once(tmp_path, name):
    obj = _layouts()[name]
    src, dst = _convert({"sd": obj}, tmp_path, name)
    reference = load_reference(src, "zip")
    for mmap in (True, False):
        got = load_checkpoint(dst, mmap=mmap)["sd"]
        assert_equivalent(got, reference["sd"])  # values bit for bit, strides, offsets, storage sizes, sharing
        for a in obj:
            assert bits(got[a]) == bits(obj[a])
            for b in obj:
                assert same_storage(got[a], got[b]) == same_storage(obj[a], obj[b]), (a, b)
    plain = load_file(str(dst / "sd.safetensors"))  # the state dict file stays a plain state dict
    assert sorted(plain) == sorted(obj)
    for key, value in obj.items():
        assert bits(plain[key]) == bits(value)  # complex128 is stored as float64 pairs (same bytes)
    data = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    written = _storage_bytes(obj) + (obj["embed.weight"].nbytes if name == "tied" else 0)  # tied: two keys, two copies
    assert data <= 1.25 * written + 4096, (data, written)


def test_transposed_state_dict_is_written_once(tmp_path):
    obj = {f"l{i}.weight": torch.randn(256, 128).t() for i in range(4)}
    src, dst = _convert(obj, tmp_path, "t")
    data = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    assert data <= 1.05 * _storage_bytes(obj) + 4096
    assert sum(p.stat().st_size for p in dst.iterdir()) <= 1.05 * src.stat().st_size


def test_plain_tensors_have_no_rows(tmp_path):
    obj = {"model": {f"layer{i}.weight": torch.randn(8) for i in range(200)},
           "state": {i: {"exp_avg": torch.zeros(8), "step": torch.tensor(3.0)} for i in range(200)}}
    _, dst = _convert(obj, tmp_path, "plain")
    sidecar = json.loads((dst / SIDECAR).read_text())
    assert sidecar["tensors"] == {} and sidecar["storages"] == {}
    assert sum(len(ids) for ids in sidecar["entries"].values()) == 600
    assert "\n " not in (dst / SIDECAR).read_text()  # written compactly
    assert (dst / SIDECAR).stat().st_size < 100 * 600  # the old rows took ~420 bytes per tensor
    got = load_checkpoint(dst)
    assert_equivalent(got, obj)
    assert got["model"]["layer0.weight"].untyped_storage().nbytes() == 32


def test_flags_and_views_keep_their_rows(tmp_path):
    lin = torch.nn.Linear(3, 2)
    obj = {"p": lin.weight, "g": torch.ones(3, requires_grad=True), "v": torch.arange(10.0)[2:5],
           "s": torch.ones(2, 3)[:, :1], "plain": torch.ones(3)}
    _, dst = _convert(obj, tmp_path, "flags")
    sidecar = json.loads((dst / SIDECAR).read_text())
    assert len(sidecar["tensors"]) == 4 and sum(len(v) for v in sidecar["entries"].values()) == 1
    got = load_checkpoint(dst)
    assert isinstance(got["p"], torch.nn.Parameter) and got["g"].requires_grad
    assert got["v"].storage_offset() == 2 and got["v"].untyped_storage().nbytes() == 40
    assert got["s"].stride() == (3, 1)
    assert_equivalent(got, {k: v.detach() if k != "p" else v for k, v in obj.items()} | {"g": obj["g"]})


def test_numpy_arrays_plain_and_not(tmp_path):
    obj = {"c": np.arange(6, dtype=np.float32).reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3))),
           "c16": np.arange(4, dtype=np.complex128), "many": [np.full(3, i, dtype=np.int16) for i in range(100)]}
    src = save(obj, tmp_path / "np.pkl", "pickle4")
    dst = tmp_path / "np.out"
    convert_checkpoint(src, dst)
    sidecar = json.loads((dst / SIDECAR).read_text())
    assert set(sidecar["arrays"]) == {"a1", "a2"}  # Fortran order and complex128 keep their rows
    for mmap in (True, False):
        got = load_checkpoint(dst, mmap=mmap)
        for key in ("c", "f", "c16"):
            assert got[key].dtype == obj[key].dtype and np.array_equal(got[key], obj[key])
        assert got["f"].flags.f_contiguous
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got["many"], obj["many"]))


def test_lstm_pieces_are_mapped_not_copied_when_lazy(tmp_path):
    obj = _lstm_flat()
    _, dst = _convert(obj, tmp_path, "lstm")
    got = load_checkpoint(dst, mmap=True)
    header = SafetensorsFile(dst / "model.safetensors")
    data = (dst / "model.safetensors").read_bytes()
    first = min(e.start for e in header.entries.values())
    storage = got["weight_ih_l0"].untyped_storage()
    assert bytes(torch.empty(0, dtype=torch.uint8).set_(storage).numpy()) == data[first:first + storage.nbytes()]
    got["bias_hh_l0"][0] = 123.0  # copy-on-write: the tensors share memory, the file is untouched
    assert got["weight_ih_l0"].untyped_storage().data_ptr() == got["bias_hh_l0"].untyped_storage().data_ptr()
    assert (dst / "model.safetensors").read_bytes() == data


def _expand_to_v1(sidecar: dict, folder: Path) -> dict:
    """The verbose form version 1 writers produced: a row for every tensor, storage and array."""
    from convert.load.rebuild import NUMPY_BY_CODE
    from convert.model.dtypes import DTYPE_NAME_BY_CODE

    for name, ids in sidecar.pop("entries", {}).items():
        header = SafetensorsFile(folder / name).entries
        for id_, key in ids.items():
            entry = header[key]
            if id_.startswith("a"):
                sidecar["arrays"][id_] = {"dtype": NUMPY_BY_CODE[entry.code], "shape": list(entry.shape),
                                          "fortran": False, "file": name, "key": key}
                continue
            dtype = DTYPE_NAME_BY_CODE[entry.code]
            sid = f"s{900000 + int(id_[1:])}"
            stride, acc = [], 1
            for size in reversed(entry.shape):
                stride.insert(0, acc)
                acc *= max(size, 1)
            sidecar["storages"][sid] = {"dtype": dtype, "nbytes": entry.nbytes, "device": "cpu", "file": name, "key": key}
            sidecar["tensors"][id_] = {"dtype": dtype, "shape": list(entry.shape), "stride": stride, "offset": 0,
                                       "storage": sid, "requires_grad": False, "parameter": False,
                                       "file": name, "key": key}
    return sidecar


def test_version_1_rows_still_load(tmp_path):
    obj = {"model": {"w": torch.randn(3, 4), "b": torch.zeros(3)}, "t": torch.randn(5, 2).t(),
           "arrays": [np.arange(3, dtype=np.float64)]}
    src, dst = _convert(obj, tmp_path, "v1")
    sidecar = _expand_to_v1(json.loads((dst / SIDECAR).read_text()), dst)
    (dst / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    for mmap in (True, False):
        assert_equivalent(load_checkpoint(dst, mmap=mmap), load_reference(src, "zip"))
