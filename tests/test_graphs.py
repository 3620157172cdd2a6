"""Object graphs: values reached twice come back as one object, cycles close where they closed.

Pure-Python graphs (a list shared under two keys, a list or dict that contains itself, a tuple in a
cycle, a shared inert record) and real omegaconf configs inside Lightning-style checkpoints (every
omegaconf node links back to its parent): convert → load → verify gives the same graph as
torch.load / read_checkpoint, and compare_trees tells graphs of different shape apart.
"""

from __future__ import annotations

import collections
import fractions
import json
import warnings

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from convert import (
    UnsupportedValue,
    compare_trees,
    convert_checkpoint,
    load_checkpoint,
    read_checkpoint,
    verify_checkpoint,
)
from convert.model.records import ObjectRecord
from tests.helpers import assert_equivalent, read_sidecar, roundtrip, run_cli, save, validate_sidecar


def _cyclic_tuple():
    t = ([], "x")
    t[0].append(t)
    return t


def _graphs():
    shared = [1, 2, {"deep": [3]}]
    loop = ["head"]
    loop.append(loop)
    selfish = {"name": "d"}
    selfish["me"] = selfish
    odict = collections.OrderedDict(a=1)
    odict["again"] = odict
    pair_a, pair_b = ["a"], ["b"]
    pair_a.append(pair_b)
    pair_b.append(pair_a)
    t = _cyclic_tuple()
    return {"x": shared, "y": shared, "z": [shared, shared], "loop": loop, "selfish": selfish, "odict": odict,
            "pair": (pair_a, pair_b), "t": t, "t_again": t, "shared_tuple": (shared, 1), "s": {"k": (1, 2)}}


def _check_identity(g):
    assert g["x"] is g["y"] and g["z"][0] is g["x"] and g["z"][1] is g["x"]
    assert g["loop"][1] is g["loop"]
    assert g["selfish"]["me"] is g["selfish"]
    assert g["odict"]["again"] is g["odict"] and type(g["odict"]) is collections.OrderedDict
    pair_a, pair_b = g["pair"]
    assert pair_a[1] is pair_b and pair_b[1] is pair_a
    assert g["t"][0][0] is g["t"] and g["t_again"] is g["t"]
    assert g["shared_tuple"][0] is g["x"]


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle0", "pickle2", "pickle5"])
def test_pure_python_graphs_roundtrip_with_identity(tmp_path, fmt):
    loaded, reference = roundtrip(_graphs(), tmp_path, fmt)
    _check_identity(reference)  # what torch.load / pickle.load give
    _check_identity(loaded)
    assert_equivalent(loaded, reference)
    src = next((tmp_path / f"src_{fmt}").iterdir())
    _check_identity(read_checkpoint(src))
    assert verify_checkpoint(src, next(p for p in tmp_path.iterdir() if p.name.startswith("out_"))) == []


def test_sidecar_writes_shared_values_once(tmp_path):
    big = list(range(1000))
    src = save({f"k{i}": big for i in range(200)}, tmp_path / "s.pt", "zip")
    convert_checkpoint(src, tmp_path / "out")
    sidecar = read_sidecar(tmp_path / "out")
    validate_sidecar(sidecar)
    assert sidecar["format_version"] == 2
    root = sidecar["root"]
    assert root["k0"] == {"$list": big, "$id": 0}
    assert all(root[f"k{i}"] == {"$ref": 0} for i in range(1, 200))
    assert (tmp_path / "out" / "checkpoint.json").stat().st_size < 40_000  # not 200 copies


def test_root_that_contains_itself(tmp_path):
    root = {"w": torch.ones(2)}
    root["self"] = root
    loaded, reference = roundtrip(root, tmp_path, "zip")
    assert loaded["self"] is loaded and reference["self"] is reference
    assert_equivalent(loaded, reference)


def test_state_dict_under_two_keys_is_one_object(tmp_path):
    sd = {"weight": torch.arange(4.0), "bias": torch.zeros(2)}
    loaded, reference = roundtrip({"model": sd, "ema": sd, "n": 1}, tmp_path, "zip")
    assert loaded["model"] is loaded["ema"]
    assert_equivalent(loaded, reference)


class Thing:
    """A class the converter does not construct: read as an inert record."""

    def __init__(self, name):
        self.name = name
        self.parent = None
        self.children = []


def test_shared_and_cyclic_records(tmp_path):
    root, leaf = Thing("root"), Thing("leaf")
    leaf.parent = root
    root.children.append(leaf)
    src = save({"a": root, "b": leaf, "frac": [fractions.Fraction(1, 3)] * 2}, tmp_path / "t.pt", "zip")
    convert_checkpoint(src, tmp_path / "out")
    loaded = load_checkpoint(tmp_path / "out")
    expected = read_checkpoint(src)
    assert compare_trees(expected, loaded) == []
    for g in (expected, loaded):
        a, b = g["a"], g["b"]
        assert isinstance(a, ObjectRecord) and a.qualname.endswith("Thing")
        assert a.state["children"][0] is b and b.state["parent"] is a
        assert g["frac"][0] is g["frac"][1]


def test_compare_trees_sees_graph_shape():
    x = [1]
    assert compare_trees({"a": x, "b": x}, {"a": x, "b": x}) == []
    assert compare_trees({"a": x, "b": x}, {"a": [1], "b": [1]})  # shared on one side only
    assert compare_trees({"a": [1], "b": [1]}, {"a": x, "b": x})
    loop, flat = [0], [0, [0]]
    loop.append(loop)
    assert compare_trees(loop, loop) == []  # terminates
    other = [0]
    other.append(other)
    assert compare_trees(loop, other) == []  # same shape, different objects
    assert compare_trees(loop, flat)
    a, b = [], []
    a.append(b)
    b.append(a)
    assert compare_trees(a, b) == []  # a 2-cycle looks the same from either end
    c = []
    c.append(c)
    assert compare_trees([a, b], [c, c])  # two objects vs one
    d1 = {"k": 1}
    d1["me"] = d1
    d2 = {"k": 1, "me": {"k": 1}}
    assert compare_trees(d1, d2)


def test_refused_value_names_the_key_path_and_kind(tmp_path):
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    src = save({"hyper_parameters": {"encoder": [1, {"scale": q}]}}, tmp_path / "q.pt", "zip")
    with pytest.raises(UnsupportedValue) as info:
        convert_checkpoint(src, tmp_path / "out")
    assert "$['hyper_parameters']['encoder'][1]['scale']: a quantized tensor" in str(info.value)
    proc = run_cli("convert", src, tmp_path / "out2")
    assert proc.returncode == 2 and proc.stderr.startswith("ckpt-convert: unsupported: $['hyper_parameters']")
    with pytest.raises(UnsupportedValue) as info:
        read_checkpoint(src)
    assert "$['hyper_parameters']['encoder'][1]['scale']" in str(info.value)


def test_deep_nesting_is_still_refused(tmp_path):
    deep = []
    for _ in range(300):
        deep = [deep]
    src = save(deep, tmp_path / "deep.pkl", "pickle4")
    proc = run_cli("convert", src, tmp_path / "out")
    assert proc.returncode == 2 and "malformed" in proc.stderr and "deeper" in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ omegaconf

def _lightning_checkpoint():
    cfg = OmegaConf.create({"encoder": {"dim": 8, "layers": [16, 32], "act": "gelu"}, "lr": 1e-3,
                            "data": {"path": "/data", "batch": 4}})
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt_state = opt.state_dict()
    opt_state["param_groups"][0]["sched_cfg"] = OmegaConf.create({"warmup": 10, "milestones": [5, 9]})
    return {
        "epoch": 2, "global_step": 20, "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(), "optimizer_states": [opt_state], "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"cfg": cfg, "encoder": cfg.encoder, "lr": 1e-3, "list_cfg": OmegaConf.create([1, {"a": 2}])},
    }


def _record_value(node):
    """An omegaconf value node's value, from its inert record (AnyNode and friends keep it in `_val`)."""
    return node.state["_val"]


def test_omegaconf_lightning_checkpoint_converts_verifies_and_loads_as_a_graph(tmp_path):
    ckpt = _lightning_checkpoint()
    src = tmp_path / "epoch=2.ckpt"
    torch.save(ckpt, src)
    convert_checkpoint(src, tmp_path / "out")
    assert verify_checkpoint(src, tmp_path / "out") == []
    validate_sidecar(read_sidecar(tmp_path / "out"))
    proc = run_cli("verify", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("inspect", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "inert record of omegaconf.dictconfig.DictConfig" in proc.stdout
    assert "encoder: → the same object as #" in proc.stdout  # hparams["encoder"] is the node inside cfg
    loaded = load_checkpoint(tmp_path / "out")
    expected = read_checkpoint(src)
    assert compare_trees(expected, loaded) == []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = torch.load(src, weights_only=False)
    # the real objects: every node links back to its parent, the shared node is one object
    assert real["hyper_parameters"]["encoder"]._get_parent() is real["hyper_parameters"]["cfg"]
    assert real["hyper_parameters"]["cfg"]._get_node("encoder") is real["hyper_parameters"]["encoder"]

    for g in (expected, loaded):
        hp = g["hyper_parameters"]
        cfg, encoder = hp["cfg"], hp["encoder"]
        assert isinstance(cfg, ObjectRecord) and cfg.qualname == "omegaconf.dictconfig.DictConfig"
        content = cfg.state["_content"]
        assert content["encoder"] is encoder  # shared, not copied
        assert encoder.state["_parent"] is cfg  # the cycle closes on the same record
        assert content["lr"].state["_parent"] is cfg
        dim = encoder.state["_content"]["dim"]
        assert dim.state["_parent"] is encoder and _record_value(dim) == real["hyper_parameters"]["cfg"].encoder.dim
        layers = encoder.state["_content"]["layers"]
        assert layers.qualname == "omegaconf.listconfig.ListConfig" and layers.state["_parent"] is encoder
        assert [_record_value(n) for n in layers.state["_content"]] == [16, 32]
        group = g["optimizer_states"][0]["param_groups"][0]
        sched = group["sched_cfg"]
        assert sched.state["_content"]["milestones"].state["_parent"] is sched
        assert group["params"] == real["optimizer_states"][0]["param_groups"][0]["params"]
        for key, tensor in real["state_dict"].items():
            assert torch.equal(g["state_dict"][key], tensor)
        for key, tensor in real["optimizer_states"][0]["state"][0].items():
            assert torch.equal(g["optimizer_states"][0]["state"][0][key], tensor)


def test_omegaconf_graph_in_the_sidecar_is_linear(tmp_path):
    cfg = OmegaConf.create({f"k{i}": {"v": i, "xs": [i, i + 1]} for i in range(50)})
    src = tmp_path / "c.ckpt"
    torch.save({"hyper_parameters": cfg, "again": cfg}, src)
    convert_checkpoint(src, tmp_path / "out")
    text = (tmp_path / "out" / "checkpoint.json").read_text()
    sidecar = json.loads(text)
    assert sidecar["root"]["again"].keys() == {"$ref"}
    assert text.count('"omegaconf.dictconfig.DictConfig"') == 51  # the root config and its 50 children, once each
    loaded = load_checkpoint(tmp_path / "out")
    assert loaded["again"] is loaded["hyper_parameters"]


def test_migrate_converts_and_verifies_omegaconf_checkpoints(tmp_path):
    from convert.migrate import migrate

    src = tmp_path / "runs"
    src.mkdir()
    torch.save(_lightning_checkpoint(), src / "last.ckpt")
    report = migrate(src, tmp_path / "dst", jobs=1)
    entry = report.files["last.ckpt"]
    assert entry["status"] == "converted" and entry["verified"] is True, entry


@pytest.mark.parametrize("root", [None, 7, "text", torch.ones(2), (1, [2])])
def test_roots_that_are_not_mappings(tmp_path, root):
    loaded, reference = roundtrip(root, tmp_path, "zip")
    assert_equivalent(loaded, reference)
