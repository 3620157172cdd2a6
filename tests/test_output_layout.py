"""The output folder: which safetensors files, their contents and metadata, the sidecar, determinism,
atomicity."""

from __future__ import annotations

import collections
import json
import os
import re

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from convert import ConvertError, convert_checkpoint, load_checkpoint, save_checkpoint, verify_checkpoint
from convert.integrity import verify_folder
from tests.helpers import (
    SIDECAR,
    EvilSystem,
    assert_equivalent,
    comparable_snapshot,
    folder_snapshot,
    load_reference,
    make_net,
    read_sidecar,
    save,
    sha256_file,
    trained,
    validate_sidecar,
)

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.safetensors$")


def safetensors_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))


def assert_file_holds(path, state_dict, exact=True):
    got = load_file(str(path))
    if exact:
        assert set(got) == set(state_dict), (sorted(got), sorted(state_dict))
    else:
        assert set(got) <= set(state_dict)
    for k, v in got.items():
        ref = state_dict[k]
        assert v.dtype == ref.dtype and v.shape == ref.shape, k
        assert torch.equal(v, ref.contiguous()), k
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta is not None and meta.get("format") == "pt", meta


def test_bare_state_dict_layout(tmp_path, src_dir, small_state_dict):
    src = save(small_state_dict, src_dir / "weights.pth", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    assert sorted(os.listdir(dst)) == [SIDECAR, "model.safetensors"]
    assert_file_holds(dst / "model.safetensors", small_state_dict)


def test_general_checkpoint_layout(tmp_path, general_checkpoint, general_checkpoint_file):
    dst = tmp_path / "out"
    convert_checkpoint(general_checkpoint_file, dst)
    files = safetensors_files(dst)
    assert "model_state_dict.safetensors" in files
    assert "tensors.safetensors" in files  # the optimizer's momentum buffers live there
    assert set(files) == {"model_state_dict.safetensors", "tensors.safetensors"}
    assert_file_holds(dst / "model_state_dict.safetensors", general_checkpoint["model_state_dict"])
    with safe_open(str(dst / "tensors.safetensors"), framework="pt") as f:
        assert f.metadata().get("format") == "pt"
        n_other = len(list(f.keys()))
    assert n_other >= len(general_checkpoint["optimizer_state_dict"]["state"])
    assert_equivalent(load_checkpoint(dst), load_reference(general_checkpoint_file, "zip"))


def test_several_state_dicts_and_modules_get_their_own_files(tmp_path, src_dir):
    model_a, model_b = make_net(seed=1), make_net(batchnorm=True, seed=2)
    ema = make_net(batchnorm=True, seed=3)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9)
    trained(model_a, opt_a)
    ckpt = {
        "modelA_state_dict": model_a.state_dict(),
        "modelB_state_dict": model_b.state_dict(),
        "optimizerA_state_dict": opt_a.state_dict(),
        "ema": ema,  # an nn.Module object: stored as its state_dict
        "criterion": nn.CrossEntropyLoss(),  # module with an empty state_dict: no file
        "empty_sd": collections.OrderedDict(),  # empty: not a state dict file
        "mixed": {"w": torch.ones(2), "n": 3},  # not all tensors: not a state dict file
        "int_keyed": {0: torch.ones(2)},  # non-str keys: not a state dict file
        "epoch": 4,
    }
    src = save(ckpt, src_dir / "multi.tar", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    files = safetensors_files(dst)
    assert set(files) == {"modelA_state_dict.safetensors", "modelB_state_dict.safetensors", "ema.safetensors",
                          "tensors.safetensors"}, files
    assert_file_holds(dst / "modelA_state_dict.safetensors", ckpt["modelA_state_dict"])
    assert_file_holds(dst / "modelB_state_dict.safetensors", ckpt["modelB_state_dict"])
    assert_file_holds(dst / "ema.safetensors", ema.state_dict())
    assert_equivalent(load_checkpoint(dst), load_reference(src, "zip"))


def test_state_dict_file_names_are_sanitized(tmp_path, src_dir, small_state_dict):
    ckpt = {"ema weights/v2": small_state_dict, "step": 1}
    src = save(ckpt, src_dir / "ema.pt", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    files = [f for f in safetensors_files(dst) if f != "tensors.safetensors"]
    assert len(files) == 1, files
    assert SAFE_NAME.match(files[0]), files[0]
    assert not (dst / "ema weights").exists()
    assert_file_holds(dst / files[0], small_state_dict)
    loaded = load_checkpoint(dst)
    assert list(loaded.keys()) == ["ema weights/v2", "step"]
    assert_equivalent(loaded, load_reference(src, "zip"))


def test_all_other_tensors_go_to_tensors_file(tmp_path, src_dir):
    obj = {"a": torch.arange(4.0), "nested": [torch.ones(2, dtype=torch.int8)], "n": 1}
    src = save(obj, src_dir / "loose.pt", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    assert safetensors_files(dst) == ["tensors.safetensors"]
    with safe_open(str(dst / "tensors.safetensors"), framework="pt") as f:
        assert f.metadata().get("format") == "pt"
        payload = sorted(bytes(f.get_tensor(k).contiguous().view(torch.uint8).numpy()) for k in f.keys())  # noqa: SIM118 - safe_open is not iterable
    expected = sorted(bytes(t.view(torch.uint8).numpy()) for t in (obj["a"], obj["nested"][0]))
    assert payload == expected


def test_no_tensor_file_without_tensors(tmp_path, src_dir):
    src = save({"epoch": 3, "name": "x", "lr": [0.1, 0.01]}, src_dir / "plain.pt", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    assert os.listdir(dst) == [SIDECAR]
    assert load_checkpoint(dst) == {"epoch": 3, "name": "x", "lr": [0.1, 0.01]}


def test_tied_state_dict_file_contents_are_consistent(tmp_path, src_dir):
    emb = torch.randn(10, 4)
    sd = collections.OrderedDict([("embed.weight", emb), ("norm.weight", torch.ones(4)), ("lm_head.weight", emb)])
    src = save(sd, src_dir / "pytorch_model.bin", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    assert (dst / "model.safetensors").exists()
    got = load_file(str(dst / "model.safetensors"))
    assert "norm.weight" in got and ("embed.weight" in got or "lm_head.weight" in got)
    assert_file_holds(dst / "model.safetensors", sd, exact=False)


@pytest.mark.parametrize("fmt,expected", [("zip", "torch-zip"), ("legacy", "torch-legacy"), ("pickle4", "pickle")])
def test_sidecar_validates_and_records_provenance(tmp_path, src_dir, small_state_dict, fmt, expected):
    obj = small_state_dict if fmt != "pickle4" else {"epoch": 1, "lr": 0.5}
    src = save(obj, src_dir / "prov.bin", fmt)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    doc = read_sidecar(dst)
    validate_sidecar(doc)
    for key in ("format_version", "source", "root", "tensors", "storages", "modules"):
        assert key in doc, key
    assert doc["source"]["name"] == "prov.bin"
    assert doc["source"]["size"] == src.stat().st_size
    assert doc["source"]["sha256"] == sha256_file(src)
    assert doc["source"]["format"] == expected
    # the sidecar is plain JSON: strict parsing (no NaN/Infinity tokens) must succeed
    text = (dst / SIDECAR).read_text(encoding="utf-8")

    def _reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    json.loads(text, parse_constant=_reject)


def test_sidecar_with_awkward_values_is_strict_json(tmp_path, src_dir):
    obj = {"nan": float("nan"), "inf": float("inf"), "big": 2**100, "bytes": b"\xff\x00", "k": {1: 2},
           "t": torch.ones(1)}
    src = save(obj, src_dir / "awkward.pt", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    doc = read_sidecar(dst)
    validate_sidecar(doc)

    def _reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    json.loads((dst / SIDECAR).read_text(encoding="utf-8"), parse_constant=_reject)
    assert_equivalent(load_checkpoint(dst), load_reference(src, "zip"))


def test_conversion_is_deterministic(tmp_path, general_checkpoint_file):
    a, b = tmp_path / "a", tmp_path / "b"
    convert_checkpoint(general_checkpoint_file, a)
    convert_checkpoint(str(general_checkpoint_file), str(b))  # str paths accepted too
    assert verify_folder(a) == [] and verify_folder(b) == []
    snap_a, snap_b = comparable_snapshot(a), comparable_snapshot(b)  # identical but for the folder id
    assert sorted(snap_a) == sorted(snap_b)
    for name in snap_a:
        assert snap_a[name] == snap_b[name], name


def test_load_only_needs_the_output_folder(tmp_path, general_checkpoint_file):
    dst = tmp_path / "out"
    convert_checkpoint(general_checkpoint_file, dst)
    ref = load_reference(general_checkpoint_file, "zip")
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    dst.rename(moved)
    general_checkpoint_file.unlink()  # the source is gone: loading must not need it
    assert_equivalent(load_checkpoint(moved), ref)


# ------------------------------------------------------------------------------ atomicity


def test_existing_destination_is_refused_and_untouched(tmp_path, general_checkpoint_file):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(general_checkpoint_file, dst)
    assert info.value.exit_code == 2
    assert os.listdir(dst) == ["keep.txt"]
    assert (dst / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_overwrite_replaces_destination(tmp_path, general_checkpoint_file):
    dst = tmp_path / "out"
    save_checkpoint({"old": torch.zeros(3)}, dst)  # a previous output (a folder of other files is refused:
    old_id = read_sidecar(dst)["folder_id"]        # tests/test_destination_contract.py)
    report = convert_checkpoint(general_checkpoint_file, dst, overwrite=True)
    assert report is not None
    assert read_sidecar(dst)["folder_id"] != old_id
    assert not (dst / "model.safetensors").exists()
    assert (dst / "model_state_dict.safetensors").exists()
    assert verify_checkpoint(general_checkpoint_file, dst) == []
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_source_is_not_modified(tmp_path, general_checkpoint_file):
    before = general_checkpoint_file.read_bytes()
    mtime = general_checkpoint_file.stat().st_mtime_ns
    convert_checkpoint(general_checkpoint_file, tmp_path / "out")
    assert general_checkpoint_file.read_bytes() == before
    assert general_checkpoint_file.stat().st_mtime_ns == mtime


def test_failed_conversion_leaves_nothing_behind(tmp_path, src_dir, out_parent, general_checkpoint_file):
    data = general_checkpoint_file.read_bytes()
    bad = src_dir / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError):
        convert_checkpoint(bad, out_parent / "out")
    assert os.listdir(out_parent) == []


def test_failed_overwrite_keeps_previous_output(tmp_path, src_dir, general_checkpoint_file):
    dst = tmp_path / "out"
    convert_checkpoint(general_checkpoint_file, dst)
    before = folder_snapshot(dst)
    data = general_checkpoint_file.read_bytes()
    bad = src_dir / "truncated.pt"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ConvertError):
        convert_checkpoint(bad, dst, overwrite=True)
    assert folder_snapshot(dst) == before
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_unsafe_conversion_leaves_nothing_behind(src_dir, out_parent):
    src = save({"x": EvilSystem(str(out_parent / "CANARY"))}, src_dir / "evil.pt", "zip")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(src, out_parent / "out")
    assert info.value.exit_code == 1
    assert os.listdir(out_parent) == []
