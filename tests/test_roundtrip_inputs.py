"""Every input kind, written here with torch.save / pickle.dump, comes back equal to torch.load."""

from __future__ import annotations

import collections
import random
import unittest.mock
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from convert import (
    ObjectRecord,
    convert_checkpoint,
    load_checkpoint,
    read_checkpoint,
    scan_checkpoint,
    verify_checkpoint,
)
from tests.helpers import (
    ALL_FORMATS,
    NAN_WITH_PAYLOAD,
    PICKLE_FORMATS,
    TORCH_FORMATS,
    assert_equivalent,
    float_bits,
    load_reference,
    make_net,
    numpy_payload,
    roundtrip,
    same_storage,
    save,
    trained,
)

# ------------------------------------------------------------------------------ containers / names


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".pkl", ".tar", ".ckpt"])
def test_zip_format_any_file_name(tmp_path, small_state_dict, suffix):
    loaded, ref = roundtrip(small_state_dict, tmp_path, "zip", name=f"weights{suffix}")
    assert_equivalent(loaded, ref)
    assert list(loaded.keys()) == list(small_state_dict.keys())
    for k, v in small_state_dict.items():
        assert torch.equal(loaded[k], v)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_legacy_format(tmp_path, small_state_dict, suffix):
    loaded, ref = roundtrip(small_state_dict, tmp_path, "legacy", name=f"weights{suffix}")
    assert_equivalent(loaded, ref)
    assert list(loaded.keys()) == list(small_state_dict.keys())


@pytest.mark.parametrize("fmt", PICKLE_FORMATS)
def test_plain_pickle_protocols_with_numpy(tmp_path, fmt):
    payload = numpy_payload()
    loaded, ref = roundtrip(payload, tmp_path, fmt, name="data.pkl")
    assert_equivalent(loaded, ref)
    # independent spot checks (not through compare_trees)
    assert type(loaded) is dict and list(loaded.keys()) == list(ref.keys())
    # (numpy itself byte-swaps big-endian arrays to native order when unpickling protocols 0-4;
    # whatever it does, the loaded value must have the reference's dtype and the original values)
    arr = loaded["arr_be_f4"]
    assert isinstance(arr, np.ndarray) and arr.dtype == ref["arr_be_f4"].dtype
    assert arr.dtype.str == (">f4" if fmt == "pickle5" else ref["arr_be_f4"].dtype.str)
    np.testing.assert_array_equal(arr, payload["arr_be_f4"])
    assert isinstance(loaded["arr_f64_fortran"], np.ndarray)
    np.testing.assert_array_equal(loaded["arr_f64_fortran"], payload["arr_f64_fortran"])
    assert type(loaded["np_f32"]) is np.float32 and loaded["np_f32"] == np.float32(1.5)
    assert loaded["big"] == 2**100 and loaded["neg_big"] == -(2**200)
    assert loaded["str"] == "héllo wörld 😀"
    assert loaded["bytes"] == bytes(range(256))
    assert type(loaded["tuple"]) is tuple and type(loaded["list"]) is list
    assert type(loaded["ordered"]) is collections.OrderedDict and list(loaded["ordered"]) == ["b", "a"]
    assert loaded["set"] == {1, 2, 3} and type(loaded["set"]) is set
    assert float_bits(loaded["negzero"]) == float_bits(-0.0)
    assert float_bits(loaded["nan"]) == float_bits(ref["nan"])
    assert float_bits(loaded["nan_payload"]) == float_bits(ref["nan_payload"])
    assert loaded[7] == "int key at top level"


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_torch_save_of_numpy_and_plain_values(tmp_path, fmt):
    payload = numpy_payload()
    payload["tensor"] = torch.arange(3, dtype=torch.int16)
    loaded, ref = roundtrip(payload, tmp_path, fmt)
    assert_equivalent(loaded, ref)
    assert float_bits(loaded["nan_payload"]) == float_bits(NAN_WITH_PAYLOAD)


# ------------------------------------------------------------------------------ tutorial checkpoints


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
@pytest.mark.parametrize("batchnorm", [False, True])
def test_tutorial_bare_state_dict(tmp_path, fmt, batchnorm):
    model = make_net(batchnorm=batchnorm)
    sd = model.state_dict()
    loaded, ref = roundtrip(sd, tmp_path, fmt, name="model_weights.pth")
    assert_equivalent(loaded, ref)
    assert type(loaded) is collections.OrderedDict
    assert list(loaded.keys()) == list(sd.keys())
    assert loaded._metadata == sd._metadata
    if batchnorm:
        assert loaded._metadata["bn1"]["version"] == 2
        nbt = loaded["bn1.num_batches_tracked"]
        assert nbt.dtype == torch.int64 and nbt.dim() == 0
    for k in sd:
        assert torch.equal(loaded[k], sd[k]), k


def _general_checkpoint(loss_kind: str, optimizer: str, batchnorm: bool = False):
    model = make_net(batchnorm=batchnorm)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = trained(model, opt)
    assert opt.state_dict()["state"], "optimizer state must be non-empty after training"
    loss_value = {"float": loss.item(), "tensor": loss, "module": nn.CrossEntropyLoss()}[loss_kind]
    return {
        "epoch": 5,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "loss": loss_value,
    }


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
@pytest.mark.parametrize("loss_kind", ["float", "tensor", "module"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tutorial_general_checkpoint(tmp_path, fmt, loss_kind, optimizer):
    ckpt = _general_checkpoint(loss_kind, optimizer, batchnorm=(optimizer == "adam"))
    loaded, ref = roundtrip(ckpt, tmp_path, fmt, name="checkpoint.tar")
    assert_equivalent(loaded, ref)
    assert list(loaded.keys()) == ["epoch", "model_state_dict", "optimizer_state_dict", "loss"]
    state = loaded["optimizer_state_dict"]["state"]
    assert sorted(state.keys()) == sorted(ckpt["optimizer_state_dict"]["state"].keys())
    assert all(type(k) is int for k in state)
    if optimizer == "sgd":
        mb = state[0]["momentum_buffer"]
        assert torch.equal(mb, ckpt["optimizer_state_dict"]["state"][0]["momentum_buffer"])
    else:
        assert torch.equal(state[0]["exp_avg_sq"], ckpt["optimizer_state_dict"]["state"][0]["exp_avg_sq"])
    if loss_kind == "module":
        assert type(loaded["loss"]) is collections.OrderedDict and len(loaded["loss"]) == 0
        assert loaded["loss"]._metadata == nn.CrossEntropyLoss().state_dict()._metadata
    elif loss_kind == "tensor":
        assert isinstance(loaded["loss"], torch.Tensor) and loaded["loss"].dim() == 0
    else:
        assert type(loaded["loss"]) is float and loaded["loss"] == ckpt["loss"]


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_several_models_in_one_file(tmp_path, fmt):
    model_a, model_b = make_net(seed=1), make_net(batchnorm=True, seed=2)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.001, momentum=0.9)
    opt_b = torch.optim.Adam(model_b.parameters())
    trained(model_a, opt_a, seed=3)
    trained(model_b, opt_b, seed=4)
    ckpt = {
        "modelA_state_dict": model_a.state_dict(),
        "modelB_state_dict": model_b.state_dict(),
        "optimizerA_state_dict": opt_a.state_dict(),
        "optimizerB_state_dict": opt_b.state_dict(),
    }
    loaded, ref = roundtrip(ckpt, tmp_path, fmt, name="multi.tar")
    assert_equivalent(loaded, ref)
    assert not torch.equal(loaded["modelA_state_dict"]["fc3.weight"], loaded["modelB_state_dict"]["fc3.weight"])


def test_module_object_inside_a_dict_becomes_its_state_dict(tmp_path):
    # tests.helpers.Net is importable here, but the converter must never need to import it.
    model = make_net(batchnorm=True)
    ckpt = {"model": model, "criterion": nn.CrossEntropyLoss(), "epoch": 3, "models": [model, make_net(seed=9)]}
    for fmt in TORCH_FORMATS:
        loaded, ref = roundtrip(ckpt, tmp_path, fmt)
        assert_equivalent(loaded, ref)
        sd = model.state_dict()
        assert type(loaded["model"]) is collections.OrderedDict
        assert list(loaded["model"].keys()) == list(sd.keys())
        assert loaded["model"]._metadata == sd._metadata
        assert type(loaded["models"]) is list and len(loaded["models"]) == 2


# ------------------------------------------------------------------------------ ecosystem shapes


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_lightning_style_checkpoint(tmp_path, fmt):
    model = make_net(batchnorm=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trained(model, opt)
    sched.step()
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": collections.OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items()),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25),
                                                                 "best_model_path": "/ckpts/e=2.ckpt"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hyper_parameters": {"lr": 1e-3, "hidden": 32, "name": "net", "betas": (0.9, 0.999), "layers": [6, 16]},
    }
    loaded, ref = roundtrip(ckpt, tmp_path, fmt, name="epoch=2-step=120.ckpt")
    assert_equivalent(loaded, ref)
    assert loaded["pytorch-lightning_version"] == "2.1.0"
    assert type(loaded["hyper_parameters"]["betas"]) is tuple


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_hf_style_pytorch_model_bin_with_tied_embeddings(tmp_path, fmt):
    torch.manual_seed(0)
    emb = torch.randn(50, 8)
    sd = collections.OrderedDict()
    sd["model.embed_tokens.weight"] = emb
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.randn(8, 8)
    sd["model.norm.weight"] = torch.ones(8, dtype=torch.bfloat16)
    sd["lm_head.weight"] = emb  # tied: one tensor under two names
    loaded, ref = roundtrip(sd, tmp_path, fmt, name="pytorch_model.bin")
    assert_equivalent(loaded, ref)
    assert list(loaded.keys()) == list(sd.keys())
    assert same_storage(loaded["model.embed_tokens.weight"], loaded["lm_head.weight"])
    assert not same_storage(loaded["model.embed_tokens.weight"], loaded["model.norm.weight"])
    assert torch.equal(loaded["lm_head.weight"], emb)


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_checkpoint_saved_on_gpu_loads_on_cpu(tmp_path, fmt):
    torch.manual_seed(0)
    ckpt = {"model": collections.OrderedDict(w=torch.randn(3, 4), b=torch.zeros(4)), "step": 10,
            "opt": {"state": {0: {"momentum_buffer": torch.randn(3, 4)}}}}
    src = tmp_path / f"gpu_{fmt}.pt"
    with unittest.mock.patch("torch.serialization.location_tag", return_value="cuda:0"):
        save(ckpt, src, fmt)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError), warnings.catch_warnings():  # the emulation worked: torch.load wants a GPU
            warnings.simplefilter("ignore")
            torch.load(src, weights_only=False)
    dst = tmp_path / f"gpu_{fmt}_out"
    convert_checkpoint(src, dst)
    ref = load_reference(src, fmt)
    if torch.cuda.is_available():  # map_location=None restores the saved device, as torch.load does
        assert load_checkpoint(dst)["model"]["w"].device == torch.device("cuda:0")
    else:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_checkpoint(dst)
    loaded = load_checkpoint(dst, map_location="cpu")
    assert_equivalent(loaded, ref)
    assert loaded["model"]["w"].device.type == "cpu"
    assert_equivalent(load_checkpoint(dst, map_location={"cuda:0": "cpu"}), ref)
    assert_equivalent(load_checkpoint(dst, map_location=lambda storage, location: storage), ref)
    assert_equivalent(load_checkpoint(dst, map_location=torch.device("cpu")), ref)
    assert verify_checkpoint(src, dst) == []


# ------------------------------------------------------------------------------ resume state


def _resume_state(with_tensors: bool) -> dict:
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(3):
        opt.step()
        sched.step()
    try:
        scaler_state = torch.amp.GradScaler("cpu").state_dict()
    except Exception:  # pragma: no cover - depends on the torch build
        scaler_state = {}
    if not scaler_state:
        scaler_state = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                        "growth_interval": 2000, "_growth_tracker": 0}
    random.seed(1234)
    np.random.seed(1234)
    state = {
        "scheduler": sched.state_dict(),
        "scaler": scaler_state,
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "np_scalar": np.float64(0.125),
        "np_int": np.int32(-3),
        "np_be": np.arange(6, dtype=">f4").reshape(2, 3),
        "np_fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "size": torch.Size([2, 3, 4]),
        "empty_size": torch.Size([]),
        "dtype": torch.bfloat16,
        "dtypes": [torch.float32, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn],
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": float("-inf"),
        "negzero": -0.0,
        "nan_payload": NAN_WITH_PAYLOAD,
        "big": 2**100,
        "neg_big": -(2**200),
        "u64max": 2**64 - 1,
        "bytes": b"\x00\x01\xfe\xff resume",
        "empty_bytes": b"",
        "unicode": "naïve ünïcödé 😀 日本",
        "tuple": (1, 2),
        "list": [1, 2],
        "nested_tuple": ((1, (2, [3])),),
        "int_keys": {0: "a", 10: "b", -1: "c"},
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
        "plain": {"z": 1, "a": 2},
        "set": {"x", "y"},
        "empty_set": set(),
        "none": None,
        "true": True,
        "false": False,
    }
    if with_tensors:
        torch.manual_seed(1234)
        state["torch_rng"] = torch.get_rng_state()
        state["size_from_tensor"] = torch.zeros(2, 5).shape
    return state


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_resume_state(tmp_path, fmt):
    state = _resume_state(with_tensors=fmt in TORCH_FORMATS)
    loaded, ref = roundtrip(state, tmp_path, fmt, name="resume.pt")
    assert_equivalent(loaded, ref)
    # independent checks of things that are easy to get subtly wrong
    assert type(loaded["size"]) is torch.Size and loaded["size"] == torch.Size([2, 3, 4])
    assert loaded["dtype"] is torch.bfloat16
    assert loaded["dtypes"] == state["dtypes"]
    assert type(loaded["numpy_rng"]) is tuple and loaded["numpy_rng"][0] == "MT19937"
    np.testing.assert_array_equal(loaded["numpy_rng"][1], state["numpy_rng"][1])
    assert loaded["numpy_rng"][1].dtype == state["numpy_rng"][1].dtype
    assert loaded["python_rng"] == state["python_rng"]
    rng = random.Random()
    rng.setstate(loaded["python_rng"])
    assert rng.random() == random.Random(1234).random()
    assert float_bits(loaded["inf"]) == float_bits(float("inf"))
    assert float_bits(loaded["ninf"]) == float_bits(float("-inf"))
    assert float_bits(loaded["negzero"]) == float_bits(-0.0)
    assert loaded["big"] == 2**100 and type(loaded["big"]) is int
    assert loaded["neg_big"] == -(2**200)
    assert loaded["u64max"] == 2**64 - 1
    assert loaded["bytes"] == state["bytes"] and type(loaded["bytes"]) is bytes
    assert loaded["unicode"] == state["unicode"]
    assert type(loaded["tuple"]) is tuple and type(loaded["list"]) is list
    assert list(loaded["int_keys"].keys()) == [0, 10, -1]
    assert type(loaded["ordered"]) is collections.OrderedDict and type(loaded["plain"]) is dict
    assert loaded["set"] == {"x", "y"} and type(loaded["empty_set"]) is set
    assert loaded["none"] is None and loaded["true"] is True and loaded["false"] is False
    assert loaded["scheduler"] == state["scheduler"]
    assert loaded["scaler"] == state["scaler"]
    if fmt in TORCH_FORMATS:
        assert torch.equal(loaded["torch_rng"], state["torch_rng"])
        assert loaded["torch_rng"].dtype == torch.uint8
        gen = torch.Generator()
        gen.set_state(loaded["torch_rng"])
        torch.manual_seed(1234)
        assert torch.equal(torch.rand(3, generator=gen), torch.rand(3))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle0", "pickle2", "pickle4"])
def test_unusual_hashable_dict_keys(tmp_path, fmt):
    obj = {"float_key": {0.5: "half", -0.0: "negzero"}, "tuple_key": {(1, 2): "pair", (): "empty"},
           "none_key": {None: 1}, "bool_keys": {True: "t", False: "f"}, "bytes_key": {b"k": 1},
           "mixed": {1: "int", "1": "str", 1.5: "float"}}
    loaded, ref = roundtrip(obj, tmp_path, fmt)
    assert_equivalent(loaded, ref)
    assert list(loaded["tuple_key"].keys()) == [(1, 2), ()]
    assert [type(k) for k in loaded["bool_keys"]] == [bool, bool]
    assert [type(k) for k in loaded["mixed"]] == [int, str, float]


# ------------------------------------------------------------------------------ read / scan


class Hyper:
    """A user class (importable here, but the reader must never import or construct it)."""

    def __init__(self):
        self.lr = 0.5
        self.layers = [1, 2]


def test_read_checkpoint_is_safe_torch_load(tmp_path):
    model = make_net(batchnorm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trained(model, opt)
    ckpt = {"model": model, "optimizer_state_dict": opt.state_dict(), "epoch": 1}
    for fmt in TORCH_FORMATS:
        src = save(ckpt, tmp_path / f"read_{fmt}.pt", fmt)
        got = read_checkpoint(src)
        assert_equivalent(got, load_reference(src, fmt))
        assert all(type(v) is torch.Tensor for v in got["model"].values())
        assert got["model"]._metadata == model.state_dict()._metadata


def test_read_checkpoint_records_unknown_classes(tmp_path):
    obj = {"hp": Hyper(), "w": torch.ones(2)}
    for fmt in (*TORCH_FORMATS, "pickle2", "pickle0"):
        if fmt.startswith("pickle"):
            obj = {"hp": Hyper()}
        src = save(obj, tmp_path / f"hp_{fmt}.pt", fmt)
        got = read_checkpoint(src)
        rec = got["hp"]
        assert isinstance(rec, ObjectRecord), fmt
        assert rec.qualname == f"{Hyper.__module__}.{Hyper.__qualname__}"
        assert rec.state == {"lr": 0.5, "layers": [1, 2]}, fmt
        assert isinstance(rec.dictitems, list) and isinstance(rec.listitems, list)
        if "w" in obj:
            assert type(got["w"]) is torch.Tensor and torch.equal(got["w"], torch.ones(2))


@pytest.mark.parametrize("fmt,expected", [("zip", "torch-zip"), ("legacy", "torch-legacy"),
                                          ("pickle2", "pickle"), ("pickle5", "pickle")])
def test_scan_reports_format_and_globals(tmp_path, fmt, expected):
    obj = {"a": np.arange(3)} if fmt.startswith("pickle") else collections.OrderedDict(w=torch.ones(2))
    src = save(obj, tmp_path / "scan.pt", fmt)
    report = scan_checkpoint(src)
    assert report.format == expected
    assert report.globals == sorted(report.globals)
    assert all(isinstance(g, str) and "." in g for g in report.globals)
    assert list(report.unsafe) == []
    if fmt in TORCH_FORMATS:
        assert "collections.OrderedDict" in report.globals
        assert any(g.startswith("torch._utils._rebuild_tensor") for g in report.globals)
    else:
        assert any(g.endswith("multiarray._reconstruct") or g.endswith("numeric._frombuffer")
                   for g in report.globals)
    assert "os.system" not in report.globals


# ------------------------------------------------------------------------------ property test

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.binary(max_size=8),
)
_key = st.one_of(st.text(max_size=6), st.integers(min_value=-1000, max_value=1000))
_tree = st.recursive(
    _leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_key, children, max_size=4),
        st.dictionaries(st.text(max_size=4), children, max_size=3).map(lambda d: collections.OrderedDict(d)),
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_tree, fmt=st.sampled_from(["zip", "legacy", "pickle0", "pickle2", "pickle4", "pickle5"]))
@example(tree={"": None}, fmt="zip")  # empty-string key
@example(tree={"": {"": [b"", "", ()]}}, fmt="pickle0")
@example(tree=[{0: 1, -1: 2, 2**70: 3}], fmt="legacy")
def test_property_plain_data_roundtrips(tmp_path_factory, tree, fmt):
    tmp = tmp_path_factory.mktemp("prop")
    loaded, ref = roundtrip({"tree": tree}, tmp, fmt)
    assert_equivalent(loaded, ref)
    assert_equivalent(read_checkpoint(next((tmp / f"src_{fmt}").iterdir())), ref)


# ------------------------------------------------------------------------------ map_location


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("where", ["cuda", "cuda:0", "device"])
def test_load_onto_cuda(tmp_path, general_checkpoint_file, where):
    dst = tmp_path / "out"
    convert_checkpoint(general_checkpoint_file, dst)
    loc = torch.device("cuda", 0) if where == "device" else where
    loaded = load_checkpoint(dst, map_location=loc)
    ref = load_reference(general_checkpoint_file, "zip")
    for k, v in ref["model_state_dict"].items():
        got = loaded["model_state_dict"][k]
        assert got.device.type == "cuda", k
        assert torch.equal(got.cpu(), v), k
    mb = loaded["optimizer_state_dict"]["state"][0]["momentum_buffer"]
    assert mb.device.type == "cuda"
    assert loaded["epoch"] == ref["epoch"] and loaded["loss"] == ref["loss"]
