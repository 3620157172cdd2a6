"""save_checkpoint: live objects → the same folder convert(torch.save(x)) gives, with no pickle written.

- property: for drawn checkpoints, `load_checkpoint(save_checkpoint(x))` is equivalent to
  `load_checkpoint(convert(torch.save(x)))`, and the folders are byte-identical but for the sidecar's `source`;
- the tutorial's general-checkpoint and multi-model patterns, whole modules, RNG states, plain objects
  (Namespace, dataclass, enum, omegaconf), shared/tied storages;
- deterministic, schema-valid, atomic, no pickle or zip in the folder, zero-copy CPU storages,
  device storages staged in bounded chunks.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import io
import json
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from convert import (
    ConvertError,
    OutputExists,
    UnsafeCheckpoint,
    UnsupportedValue,
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from convert.ops.save import live_tree
from convert.sources.staging import DeviceStorage
from convert.write.plan import Entry
from convert.write.safetensors_io import write_safetensors
from tests.helpers import (
    assert_equivalent,
    bits,
    comparable_snapshot,
    load_reference,
    make_net,
    read_sidecar,
    same_storage,
    save,
    trained,
    validate_sidecar,
)
from tests.strategies import budget, checkpoints


class Color(enum.Enum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass
class TrainConfig:
    lr: float = 0.1
    layers: tuple = (2, 3)
    name: str = "run"


def assert_no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:4]
            assert head[:1] != b"\x80", f"{path} starts like a pickle"
            assert not head.startswith(b"PK"), f"{path} is a zip"


def same_but_source(saved: Path, converted: Path) -> None:
    """The two folders hold the same files, byte for byte but for the random folder id, and the same
    sidecar but for `source` (and the folder id and the digests that cover it)."""
    a, b = comparable_snapshot(saved), comparable_snapshot(converted)
    assert sorted(a) == sorted(b)
    for name in a:
        if name != "checkpoint.json":
            assert a[name] == b[name], name
    sa, sb = (json.loads(snap["checkpoint.json"]) for snap in (a, b))
    assert sa.pop("source") == {"format": "live", "torch": torch.__version__.split("+")[0]}
    assert sb.pop("source")["format"] in ("torch-zip", "pickle")
    assert sa == sb


def save_and_convert(tree, tmp: Path, fmt: str = "zip") -> tuple[Path, Path]:
    saved, converted = tmp / "saved", tmp / "converted"
    save_checkpoint(tree, saved)
    convert_checkpoint(save(tree, tmp / "src.pt", fmt), converted)
    return saved, converted


# ----------------------------------------------------------------------------------- the property

@budget(30)
@given(tree=st.sampled_from(["zip", "pickle2"]).flatmap(lambda fmt: st.tuples(st.just(fmt), checkpoints(fmt))))
def test_save_equals_convert_of_torch_save(tree):
    fmt, tree = tree
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            convert_checkpoint(save(tree, tmp / "src.pt", fmt), tmp / "converted")
        except UnsupportedValue:  # e.g. a quantized dtype: save refuses it the same way
            with pytest.raises(UnsupportedValue):
                save_checkpoint(tree, tmp / "saved")
            assert not (tmp / "saved").exists()
            return
        save_checkpoint(tree, tmp / "saved")
        assert_equivalent(load_checkpoint(tmp / "saved"), load_checkpoint(tmp / "converted"))
        assert_equivalent(load_checkpoint(tmp / "saved"), load_reference(tmp / "src.pt", fmt))
        same_but_source(tmp / "saved", tmp / "converted")
        validate_sidecar(read_sidecar(tmp / "saved"))
        assert_no_pickle(tmp / "saved")


@budget(10)
@given(tree=checkpoints("zip"))
def test_saving_twice_is_byte_identical(tree):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            save_checkpoint(tree, Path(tmp) / "a")
        except UnsupportedValue:
            return
        save_checkpoint(tree, Path(tmp) / "b")
        assert comparable_snapshot(Path(tmp) / "a") == comparable_snapshot(Path(tmp) / "b")


# ----------------------------------------------------------------------------------- explicit cases

def test_tutorial_general_checkpoint_saved_and_resumed(tmp_path):
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = trained(model, opt)
    save_checkpoint({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                     "loss": loss}, tmp_path / "epoch5")
    assert_no_pickle(tmp_path / "epoch5")

    resumed = make_net(seed=99)
    resumed_opt = torch.optim.SGD(resumed.parameters(), lr=0.5)
    ck = load_checkpoint(tmp_path / "epoch5")
    resumed.load_state_dict(ck["model_state_dict"])
    resumed_opt.load_state_dict(ck["optimizer_state_dict"])
    assert ck["epoch"] == 5 and bits(ck["loss"]) == bits(loss)
    # continuing from the saved state gives bitwise what continuing the original gives
    trained(model, opt, steps=2, seed=7)
    trained(resumed, resumed_opt, steps=2, seed=7)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert bits(a) == bits(b), name


def test_tutorial_multiple_models(tmp_path):
    a, b = make_net(seed=1), make_net(seed=2)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(b.parameters())
    trained(a, opt_a)
    trained(b, opt_b)
    tree = {"modelA_state_dict": a.state_dict(), "modelB_state_dict": b.state_dict(),
            "optimizerA_state_dict": opt_a.state_dict(), "optimizerB_state_dict": opt_b.state_dict()}
    saved, converted = save_and_convert(tree, tmp_path)
    same_but_source(saved, converted)
    ck = load_checkpoint(saved)
    b2 = make_net(seed=3)
    b2.load_state_dict(ck["modelB_state_dict"])
    opt_b2 = torch.optim.Adam(b2.parameters())
    opt_b2.load_state_dict(ck["optimizerB_state_dict"])
    assert_equivalent(opt_b2.state_dict(), opt_b.state_dict())


def test_whole_module_rng_states_and_plain_objects(tmp_path):
    model = make_net(batchnorm=True)
    tree = {
        "model": model, "rng": torch.get_rng_state(), "np_rng": np.random.get_state(), "py_rng": random.getstate(),
        "args": argparse.Namespace(lr=0.1, layers=[1, 2]), "cfg": TrainConfig(), "color": Color.GREEN,
        "size": torch.Size([2, 3]),
        "dtype": torch.bfloat16, "device": torch.device("cpu"), "array": np.arange(12.0).reshape(3, 4).T,
        "scalar": np.float32(2.5), "bytes": b"\x00\x80", "ordered": collections.OrderedDict(b=1, a=2),
        "gen_state": torch.Generator().manual_seed(3).get_state(), "complex": 1 - 2j, "set": {3, 1},
    }
    saved, converted = save_and_convert(tree, tmp_path)
    same_but_source(saved, converted)
    ck = load_checkpoint(saved)
    assert ck["args"].qualname == "argparse.Namespace" and ck["args"].state == {"lr": 0.1, "layers": [1, 2]}
    assert ck["cfg"].qualname.endswith("TrainConfig") and ck["cfg"].state["lr"] == 0.1
    assert ck["color"].qualname.endswith("Color") and ck["color"].args == (2,)
    torch.set_rng_state(ck["rng"])  # a uint8 tensor torch takes back as it is
    np.random.set_state(ck["np_rng"])
    random.setstate(ck["py_rng"])
    assert list(ck["model"]) == list(model.state_dict())
    assert read_sidecar(saved)["modules"][0]["class"] == "tests.helpers.Net"


def test_omegaconf_config_is_handled_as_convert_handles_it(tmp_path):
    """An omegaconf config is an object graph with parent links (cycles): save and convert agree on it."""
    omegaconf = pytest.importorskip("omegaconf")
    tree = {"cfg": omegaconf.OmegaConf.create({"a": 1, "b": {"c": [1, 2]}})}
    outcomes = []
    for write in (lambda: save_checkpoint(tree, tmp_path / "saved"),
                  lambda: convert_checkpoint(save(tree, tmp_path / "src.pt", "zip"), tmp_path / "converted")):
        try:
            write()
            outcomes.append("written")
        except ConvertError as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes[0] == outcomes[1]
    if outcomes[0] == "written":
        same_but_source(tmp_path / "saved", tmp_path / "converted")
    else:
        assert not (tmp_path / "saved").exists()


def test_shared_and_tied_storages_stay_shared(tmp_path):
    emb = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = emb.weight  # tied
    base = torch.arange(24.0)
    tree = {"emb": emb.state_dict(), "head": head.state_dict(), "view": base[4:10].view(2, 3).t(),
            "whole": base, "again": base, "alias": [base, base]}
    saved, converted = save_and_convert(tree, tmp_path)
    same_but_source(saved, converted)
    ck = load_checkpoint(saved)
    assert same_storage(ck["emb"]["weight"], ck["head"]["weight"])
    assert same_storage(ck["view"], ck["whole"]) and ck["whole"] is ck["again"] is ck["alias"][0]
    assert bits(ck["view"]) == bits(base[4:10].view(2, 3).t())


def test_cpu_storages_are_read_in_place():
    t = torch.arange(10, dtype=torch.float32)
    ref = live_tree({"t": t})["t"]
    assert np.shares_memory(ref.storage.buffer, t.numpy())
    arr = np.arange(6.0)
    assert np.shares_memory(np.frombuffer(live_tree([arr])[0].data, dtype=np.float64), arr)


def test_refuses_what_convert_refuses(tmp_path):
    with pytest.raises(UnsafeCheckpoint):
        save_checkpoint({"f": os.system}, tmp_path / "a")
    with pytest.raises(UnsupportedValue, match="q"):
        save_checkpoint({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, tmp_path / "b")
    with pytest.raises(UnsupportedValue):
        save_checkpoint({"s": torch.ones(2).to_sparse()}, tmp_path / "c")
    assert sorted(os.listdir(tmp_path)) == []  # nothing left behind, not even a temporary folder


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    save_checkpoint({"a": torch.ones(2)}, tmp_path / "ck")
    with pytest.raises(OutputExists):
        save_checkpoint({"a": torch.zeros(2)}, tmp_path / "ck")
    assert bits(load_checkpoint(tmp_path / "ck")["a"]) == bits(torch.ones(2))
    save_checkpoint({"a": torch.zeros(2)}, tmp_path / "ck", overwrite=True)
    assert bits(load_checkpoint(tmp_path / "ck")["a"]) == bits(torch.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_sharded_save(tmp_path):
    sd = {f"w{i}": torch.full((256,), float(i)) for i in range(8)}
    report = save_checkpoint({"model": sd}, tmp_path / "ck", max_shard_size=2048)
    assert len([f for f in report.files if f.startswith("model-")]) > 1
    assert_equivalent(load_checkpoint(tmp_path / "ck"), {"model": sd})


def test_device_storage_is_staged_in_bounded_chunks(tmp_path):
    """The chunked path the writer takes for CUDA storages, exercised with a CPU storage and tiny chunks."""
    data = torch.arange(1000, dtype=torch.int32)
    source = DeviceStorage(data.untyped_storage(), chunk_bytes=64)
    chunks = list(bytes(c) for c in source.chunks(8, 4000 - 16))
    assert max(map(len, chunks)) == 64 and b"".join(chunks) == data.numpy().tobytes()[8:-8]
    entry = Entry("x", "I32", [998], 3992, lambda: pytest.fail("bytes must come from the staged source"), (source, 4))
    with open(tmp_path / "x.safetensors", "wb") as out:
        write_safetensors(out, [entry], {"format": "pt"})
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "x.safetensors")["x"], data[1:999])
    assert bytes(source.to_host(4, 8)) == data.numpy().tobytes()[4:12]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_saved_through_pinned_staging(tmp_path):
    model = make_net().cuda()
    opt = torch.optim.Adam(model.parameters())
    trained_cuda = {"model": model.state_dict(), "view": model.fc1.weight.t(), "opt": opt.state_dict()}
    save_checkpoint(trained_cuda, tmp_path / "ck")
    ck = load_checkpoint(tmp_path / "ck")
    assert ck["model"]["fc1.weight"].device.type == "cpu"
    for name, t in model.state_dict().items():
        assert bits(ck["model"][name]) == bits(t), name
    assert bits(ck["view"]) == bits(model.fc1.weight.t())
    assert read_sidecar(tmp_path / "ck")["storages"]["s0"]["device"].startswith("cuda")


def test_pickle_bytes_never_reach_the_folder(tmp_path):
    """Even objects whose own pickle would carry pickled bytes are recorded as data."""
    payload = pickle.dumps({"x": 1})
    buf = io.BytesIO(payload)
    save_checkpoint({"raw": payload, "buf": buf.getvalue()}, tmp_path / "ck")
    assert_no_pickle(tmp_path / "ck")  # the bytes are base64 in the JSON sidecar, not a file
    assert load_checkpoint(tmp_path / "ck")["raw"] == payload


def test_tensor_flags_attributes_and_dict_subclasses(tmp_path):
    p = torch.nn.Parameter(torch.ones(2))
    p.tag = 3
    a = torch.ones(3)
    a.note = "kept"
    tree = {"conj": torch.randn(3, dtype=torch.complex64).conj(), "neg": torch.randn(2, dtype=torch.complex64).conj().imag,
            "attr": a, "param": p, "dd": collections.defaultdict(list, {"a": [1]}), "counter": collections.Counter("aab")}
    saved, converted = save_and_convert(tree, tmp_path)
    same_but_source(saved, converted)
    ck = load_checkpoint(saved)
    assert ck["conj"].is_conj() and ck["neg"].is_neg() and ck["attr"].note == "kept" and ck["param"].tag == 3
    assert ck["dd"].qualname == "collections.defaultdict" and ck["dd"].dictitems == [("a", [1])]


def test_views_of_one_storage_as_two_dtypes_are_refused_like_torch_save(tmp_path):
    base = torch.zeros(4)
    with pytest.raises(UnsupportedValue, match="same storage"):
        save_checkpoint({"f": base, "i": base.view(torch.int32)}, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
