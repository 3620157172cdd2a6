"""The field corpus: checkpoints written by training libraries' own saving code, converted and compared with
what torch.load(weights_only=False) / pickle.load give (tests/helpers.torch_reference: modules as state dicts).

Each library is imported only where it is installed (pyproject's `test` extra lists those that install from
wheels on CPU quickly); the files are written in a subprocess so that nothing a library registers at import
leaks into the reader under test.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from convert import convert_checkpoint, load_checkpoint
from convert.model.records import GlobalRef, ObjectRecord
from convert.scan import scan_file
from convert.scan.verdicts import SUSPICIOUS, UNSAFE
from tests.helpers import assert_equivalent, read_sidecar, torch_reference, validate_sidecar


def _write(code: str, *modules: str) -> None:
    for module in modules:
        pytest.importorskip(module)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


def _convert(path, tmp_path):
    out = tmp_path / "out"
    convert_checkpoint(path, out)
    validate_sidecar(read_sidecar(out))
    return load_checkpoint(out)


def _reference(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=False, map_location="cpu")


# ----------------------------------------------------------------------------------------------- mmengine

MMENGINE = """
import sys, torch
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import save_checkpoint
torch.manual_seed(0)
hub = MessageHub.get_instance("field")
for loss in (0.5, 0.25, 0.125):
    hub.update_scalar("train/loss", loss)
hub.update_scalar("train/lr", 0.01)
hub.update_info("iter", 3)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
model(torch.randn(2, 3, 8, 8)).sum().backward(); opt.step()
save_checkpoint({"meta": {"epoch": 1, "iter": 3, "mmengine_version": "0.10.7"}, "state_dict": model.state_dict(),
                 "optimizer": opt.state_dict(), "message_hub": hub.state_dict()}, sys.argv[1])
"""


def test_mmengine_runner_checkpoint_with_message_hub(tmp_path):
    path = tmp_path / "epoch_1.pth"
    _write(MMENGINE.replace("sys.argv[1]", repr(str(path))), "mmengine")
    report = scan_file(path)
    assert report.verdict == SUSPICIOUS, [str(f.name) for f in report.findings]
    assert {f.category for f in report.findings if f.name == "builtins.getattr"} == {"attribute-reference"}
    got = _convert(path, tmp_path)
    ref = _reference(path)
    for key in ("meta", "state_dict", "optimizer"):
        assert_equivalent(got[key], torch_reference(ref[key]))
    from mmengine.logging.history_buffer import HistoryBuffer

    for name, live in ref["message_hub"]["log_scalars"].items():
        record = got["message_hub"]["log_scalars"][name]
        assert isinstance(record, ObjectRecord) and record.qualname == "mmengine.logging.history_buffer.HistoryBuffer"
        np.testing.assert_array_equal(record.state["_log_history"], live._log_history)
        np.testing.assert_array_equal(record.state["_count_history"], live._count_history)
        for method, ref_attr in record.state["statistics_methods"].items():
            assert ref_attr.via == "getattr"
            assert ref_attr.qualname == f"{HistoryBuffer.__module__}.{getattr(HistoryBuffer, method).__qualname__}"
    assert got["message_hub"]["runtime_info"] == ref["message_hub"]["runtime_info"]


# ------------------------------------------------------------------------------------------------- skorch

SKORCH = """
import pickle, sys, numpy as np, torch
from skorch import NeuralNetClassifier
class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.hidden = torch.nn.Linear(4, 8); self.out = torch.nn.Linear(8, 2)
    def forward(self, x): return torch.softmax(self.out(torch.relu(self.hidden(x))), -1)
torch.manual_seed(0); rng = np.random.default_rng(0)
net = NeuralNetClassifier(Classifier, max_epochs=2, lr=0.1, verbose=0, train_split=None,
                          optimizer=torch.optim.SGD, optimizer__momentum=0.9)
net.fit(rng.standard_normal((32, 4)).astype("float32"), rng.integers(0, 2, 32).astype("int64"))
with open(sys.argv[1], "wb") as f:
    pickle.dump(net, f)  # skorch's documented way to save a whole net
"""


def test_skorch_pickled_net(tmp_path):
    path = tmp_path / "net.pkl"
    _write(SKORCH.replace("sys.argv[1]", repr(str(path))), "skorch")
    assert scan_file(path).verdict == SUSPICIOUS
    got = _convert(path, tmp_path)
    sys.path.insert(0, str(tmp_path))
    with open(path, "rb") as f:
        import __main__

        class Classifier(torch.nn.Module):  # the reference needs the user's class, as pickle.load does
            def __init__(self):
                super().__init__()
                self.hidden, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        __main__.Classifier = Classifier
        try:
            live = pickle.load(f)
        finally:
            del __main__.Classifier
    state = got.state
    assert "__cuda_dependent_attributes__" not in state  # merged in, as skorch's __setstate__ does
    assert_equivalent(state["module_"], live.module_.state_dict())
    assert_equivalent(state["criterion_"], live.criterion_.state_dict())
    opt = state["optimizer_"]
    assert opt.qualname == "torch.optim.sgd.SGD"
    per_param = opt.state["state"]  # the optimizer's defaultdict, keyed by the parameters themselves
    assert per_param.qualname == "collections.defaultdict"
    live_state = list(live.optimizer_.state.items())
    assert len(per_param.dictitems) == len(live_state) == 4
    for (param, slots), (live_param, live_slots) in zip(per_param.dictitems, live_state):
        assert torch.equal(param, live_param) and torch.equal(slots["momentum_buffer"], live_slots["momentum_buffer"])
    assert state["history_"].qualname == "skorch.history.History"


def test_a_payload_in_skorch_nested_state_is_refused(tmp_path):
    pytest.importorskip("skorch")
    from tests.security import pk

    marker = tmp_path / "live" / "pwned_marker"
    marker.parent.mkdir()
    evil = pk.proto(pk.call(pk.glob("posix", "system"), pk.text("touch pwned_marker")), 4)
    state = pk.dct((pk.text("device"), pk.text("cpu")), (pk.text("__cuda_dependent_attributes__"), pk.raw_bytes(evil)))
    payload = pk.proto(pk.build(pk.glob("skorch.classifier", "NeuralNetClassifier") + pk.tup() + b"\x81", state), 4)
    (marker.parent / "p.pkl").write_bytes(payload)
    subprocess.run([sys.executable, "-c", "import pickle; pickle.load(open('p.pkl', 'rb'))"], cwd=marker.parent,
                   capture_output=True, timeout=120)
    assert marker.exists()  # live: skorch's __setstate__ unpickles the bytes with a full unpickler
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    report = scan_file(path)
    assert report.verdict == UNSAFE  # the walk cannot see into the bytes; the reader does
    from convert.errors import UnsafeCheckpoint

    with pytest.raises(UnsafeCheckpoint):
        convert_checkpoint(path, tmp_path / "out")


# -------------------------------------------------------------------------------- omegaconf at protocol 2

LIGHTNING_OMEGACONF = """
import sys, torch
from omegaconf import OmegaConf
torch.manual_seed(0)
model = torch.nn.Linear(4, 3)
hparams = OmegaConf.create({"model": {"hidden": [64, 32], "dropout": 0.1}, "lr": 1e-3, "seed": 7,
                            "labels": {1: "a", 2: "b"}})
torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6", "state_dict": model.state_dict(),
            "hparams_name": "kwargs", "hyper_parameters": {"cfg": hparams}}, sys.argv[1], pickle_protocol=2)
"""


def _globals_in(value, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    if id(value) in seen:
        return set()
    seen.add(id(value))
    if isinstance(value, GlobalRef):
        return {value.qualname}
    if isinstance(value, ObjectRecord):
        found = {value.qualname}
        for part in (value.args, value.state, value.dictitems, value.listitems):
            found |= _globals_in(part, seen)
        return found
    if isinstance(value, dict):
        return set().union(*(_globals_in(k, seen) | _globals_in(v, seen) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        return set().union(*(_globals_in(v, seen) for v in value))
    return set()


def test_lightning_checkpoint_with_omegaconf_at_protocol_2(tmp_path):
    path = tmp_path / "last.ckpt"
    _write(LIGHTNING_OMEGACONF.replace("sys.argv[1]", repr(str(path))), "omegaconf")
    assert b"__builtin__" in path.read_bytes()  # the protocol-2 spelling is really in the file
    report = scan_file(path)
    assert report.verdict != UNSAFE
    assert not any(g.startswith("__builtin__") for g in report.globals)
    got = _convert(path, tmp_path)
    ref = _reference(path)
    for key in ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "hparams_name"):
        assert_equivalent(got[key], torch_reference(ref[key]))
    names = _globals_in(got["hyper_parameters"])
    assert "omegaconf.dictconfig.DictConfig" in names
    assert not any(n.startswith("__builtin__") for n in names), names
    assert {"builtins.dict", "builtins.int"} & names  # omegaconf's metadata: key/object types, as torch.load names them
