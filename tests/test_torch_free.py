"""scan and convert need no torch (issue 14): run the CLI in a child where `import torch` fails.

The child installs a meta-path finder that refuses torch, runs the CLI, and fails if torch ended up
imported anyway. The outputs are then loaded here (with torch) and compared with torch.load.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from convert import compare_trees, load_checkpoint
from tests.helpers import NO_TORCH, REPO_ROOT, assert_one_line_error, comparable_snapshot, run_python


def run_without_torch(*args, cwd):
    return run_python(NO_TORCH, *args, cwd=cwd, pythonpath=[REPO_ROOT])


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.bn = torch.nn.BatchNorm1d(4)


def _checkpoint() -> dict:
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    return {
        "epoch": 2, "model_state_dict": Net().state_dict(), "size": torch.Size([2, 3]), "device": torch.device("cuda:1"),
        "dtype": torch.bfloat16, "transposed": base.t(), "strided": base[:, ::2], "expanded": torch.ones(3, 1).expand(3, 4),
        "complex128": torch.randn(5, dtype=torch.complex128)[1::2], "bf16": torch.randn(3, 3).to(torch.bfloat16).t(),
        "rng": torch.get_rng_state(), "array": np.arange(6, dtype=np.float32).reshape(2, 3), "loss": 0.25,
    }


def test_scan_and_convert_without_torch(tmp_path):
    src = tmp_path / "ckpt.pt"
    original = _checkpoint()
    torch.save(original, src)
    torch.save(Net(), tmp_path / "whole.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"lr": 0.1, "steps": [1, 2]}, f)
    for args in (["scan", src], ["scan", tmp_path / "whole.pt"], ["scan", tmp_path], ["inspect", src],
                 ["convert", src, tmp_path / "out", "-q"], ["convert", tmp_path / "whole.pt", tmp_path / "whole", "-q"]):
        proc = run_without_torch(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    loaded = load_checkpoint(tmp_path / "out")
    assert compare_trees(torch.load(src, weights_only=False), loaded) == []
    assert type(loaded["size"]) is torch.Size and loaded["device"] == torch.device("cuda:1")
    assert loaded["dtype"] is torch.bfloat16


def test_lean_output_is_byte_identical_to_the_torch_one(tmp_path):
    """The torch-free writer produces what a run with torch importable produces."""
    src = tmp_path / "ckpt.pt"
    torch.save(_checkpoint(), src)
    assert run_without_torch("convert", src, tmp_path / "lean", "-q", cwd=tmp_path).returncode == 0
    from convert import convert_checkpoint

    convert_checkpoint(src, tmp_path / "full")
    # byte for byte, but for the random folder id (and the file digests that cover it)
    assert comparable_snapshot(tmp_path / "full") == comparable_snapshot(tmp_path / "lean")


@pytest.mark.parametrize("command", ["verify", "demo"])
def test_torch_side_commands_say_what_is_missing(tmp_path, command):
    src = tmp_path / "a.pt"
    torch.save({"w": torch.ones(2)}, src)
    run_without_torch("convert", src, tmp_path / "out", "-q", cwd=tmp_path)
    args = ["verify", src, tmp_path / "out"] if command == "verify" else ["demo"]
    proc = run_without_torch(*args, cwd=tmp_path)
    assert_one_line_error(proc, 2)
    assert "needs torch" in proc.stderr and "pip install torch" in proc.stderr


def test_no_module_imports_torch_on_the_lean_path():
    """The modules scan/convert use import no torch at import time (a new import would break the lean install)."""
    proc = run_python("import sys, convert, convert.cli, convert.cli.commands, convert.migrate, convert.write.folder, "
                      "convert.write.plan, convert.read, convert.sidecar.schema\n"
                      "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])",
                      pythonpath=[REPO_ROOT])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
    assert sys.modules.get("torch") is not None  # this process has torch: the check above ran in a child


def test_scan_and_argument_errors_load_only_what_they_use(tmp_path):
    """`scan` and a bad argument start light: neither numpy nor the writer is imported (issue 25: scan's per-file
    cost is mostly start-up; issue 24: a mistyped command answers at once). An eager import would fail this."""
    torch.save({"w": torch.ones(2)}, tmp_path / "m.pt")
    heavy = ("numpy", "convert.write.folder", "convert.write.plan", "convert.ops.checkpoint", "convert.sidecar.codec",
             "convert.sidecar.schema", "convert.sign", "concurrent.futures")
    script = ("import runpy, sys\nsys.argv = ['ckpt-convert', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('convert', run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
              f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules), code)")
    for argv, code in ((["scan", "-q", "m.pt"], 0), (["scan", "-q", "."], 0), (["convert", "missing.pt", "out"], 2),
                       (["frobnicate"], 2)):
        proc = run_python(script, *argv, cwd=tmp_path, pythonpath=[REPO_ROOT])
        last = proc.stdout.strip().splitlines()[-1]
        assert last == f"LOADED [] {code}", (argv, proc.stdout, proc.stderr)
    # one file: no folder walker either (a folder needs it, and few files need no pool)
    proc = run_python(script.replace(repr(heavy), repr(("convert.sources.discover", "convert.sources.dcp_metadata"))),
                      "scan", "-q", "m.pt", cwd=tmp_path, pythonpath=[REPO_ROOT])
    assert proc.stdout.strip().splitlines()[-1] == "LOADED [] 0", (proc.stdout, proc.stderr)
