"""torch.save(model): the class is not importable where the conversion runs.

A first interpreter defines the model class in ``__main__`` (or in a package that only it can
import) and saves it; a second interpreter, where that class does not exist, converts and loads.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from convert import compare_trees, convert_checkpoint, load_checkpoint, read_checkpoint
from tests.helpers import REPO_ROOT, assert_equivalent, read_sidecar, run_python, same_storage, validate_sidecar

MODEL_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class TheModelClass(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.bn1 = nn.BatchNorm2d(6)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)
            self.head = self.fc3  # the same submodule under a second name
            self.blocks = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Sequential(nn.LayerNorm(10)))
            self.register_buffer("scratch_nonpersistent", torch.full((3,), 7.0), persistent=False)
            self.register_buffer("running_stat", torch.arange(4.0))
            self.register_buffer("absent", None)
            self.temperature = 0.7
            self.config = {"hidden": 120, "name": "tutorial"}

        def forward(self, x):
            x = self.pool(F.relu(self.bn1(self.conv1(x))))
            x = self.pool(F.relu(self.conv2(x)))
            x = torch.flatten(x, 1)
            return self.blocks(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))
''')

SAVE_MAIN = MODEL_SOURCE + textwrap.dedent('''
    import sys
    out = sys.argv[1]
    torch.manual_seed(0)
    model = TheModelClass()
    model.train()
    model(torch.randn(2, 3, 32, 32))  # updates BatchNorm running stats / num_batches_tracked
    model.eval()
    torch.save(model, out + "/whole_zip.pt")
    torch.save(model, out + "/whole_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"model": model, "epoch": 7}, out + "/dict_with_model.pt")
    torch.save(model.state_dict(), out + "/expected_sd.pt")
''')

FAKEPKG_MODELING = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class FakeConfig:
        def __init__(self, vocab_size=32, hidden_size=8):
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size


    class FakeForCausalLM(nn.Module):
        # (no class-level `_version` override: a class attribute is not in the pickle, so a
        # converter without the class cannot know it; torch.nn's own versions are known)

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList([nn.Linear(config.hidden_size, config.hidden_size) for _ in range(2)])
            self.norm = nn.LayerNorm(config.hidden_size)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.lm_head.weight = self.embed_tokens.weight  # tied parameters, HF style
            self.register_buffer("rope_cache", torch.ones(4), persistent=False)
''')

SAVE_FAKEPKG = textwrap.dedent('''
    import sys
    import torch
    from fakepkg.modeling import FakeConfig, FakeForCausalLM
    out = sys.argv[1]
    torch.manual_seed(0)
    model = FakeForCausalLM(FakeConfig())
    torch.save(model, out + "/fake_whole.bin")
    torch.save(model, out + "/fake_whole_legacy.bin", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), out + "/fake_expected_sd.pt")
''')

CONVERT_ELSEWHERE = textwrap.dedent('''
    import json, sys
    import torch
    import __main__
    from convert import compare_trees, convert_checkpoint, load_checkpoint
    src, dst, expected, key = sys.argv[1:5]
    assert not hasattr(__main__, "TheModelClass")
    try:
        import fakepkg  # noqa: F401
        raise SystemExit("fakepkg must not be importable here")
    except ImportError:
        pass
    convert_checkpoint(src, dst)
    loaded = load_checkpoint(dst)
    if key:
        loaded = loaded[key]
    exp = torch.load(expected, weights_only=True)
    same_meta = getattr(loaded, "_metadata", None) == exp._metadata
    print(json.dumps({"diffs": compare_trees(loaded, exp), "type": type(loaded).__name__,
                      "keys": list(loaded.keys()), "metadata_equal": same_meta}))
''')


@pytest.fixture(scope="module")
def saved_main(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole_main")
    proc = run_python(SAVE_MAIN, out, cwd=out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def saved_fakepkg(tmp_path_factory):
    pkgroot = tmp_path_factory.mktemp("pkgroot")
    (pkgroot / "fakepkg").mkdir()
    (pkgroot / "fakepkg" / "__init__.py").write_text("")
    (pkgroot / "fakepkg" / "modeling.py").write_text(FAKEPKG_MODELING)
    out = tmp_path_factory.mktemp("whole_fake")
    proc = run_python(SAVE_FAKEPKG, out, cwd=out, pythonpath=[pkgroot])
    assert proc.returncode == 0, proc.stderr
    return out


def _convert_in_fresh_interpreter(src, dst, expected, key=""):
    proc = run_python(CONVERT_ELSEWHERE, src, dst, expected, key, cwd=dst.parent, pythonpath=[REPO_ROOT])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", ["whole_zip.pt", "whole_legacy.pt"])
def test_whole_model_from_main(saved_main, tmp_path, name):
    dst = tmp_path / "out"
    if name == "whole_zip.pt":
        result = _convert_in_fresh_interpreter(saved_main / name, dst, saved_main / "expected_sd.pt")
        assert result["diffs"] == []
        assert result["type"] == "OrderedDict"
        assert result["metadata_equal"] is True
    else:  # the test process does not have TheModelClass either
        convert_checkpoint(saved_main / name, dst)

    expected = _expected(saved_main / "expected_sd.pt")
    loaded = load_checkpoint(dst)
    assert_equivalent(loaded, expected)
    assert list(loaded.keys()) == list(expected.keys())
    assert loaded._metadata == expected._metadata
    assert loaded._metadata["bn1"]["version"] == 2
    assert "scratch_nonpersistent" not in loaded
    assert "running_stat" in loaded and "absent" not in loaded
    # the tied submodule appears under both names, sharing its storage
    assert "fc3.weight" in loaded and "head.weight" in loaded
    assert same_storage(loaded["fc3.weight"], loaded["head.weight"])
    assert loaded["bn1.num_batches_tracked"].item() == 1
    assert "blocks.2.0.weight" in loaded

    # layout: the model's state dict is model.safetensors; the sidecar names the class
    files = load_file(str(dst / "model.safetensors"))
    assert set(files) <= set(expected)
    assert set(expected) - {"head.weight", "head.bias", "fc3.weight", "fc3.bias"} <= set(files)
    for k, v in files.items():
        assert torch.equal(v, expected[k]), k
    doc = read_sidecar(dst)
    validate_sidecar(doc)
    assert "__main__.TheModelClass" in json.dumps(doc["modules"])
    assert doc["source"]["format"] == ("torch-zip" if "zip" in name else "torch-legacy")


def test_whole_model_inside_a_dict(saved_main, tmp_path):
    dst = tmp_path / "out"
    convert_checkpoint(saved_main / "dict_with_model.pt", dst)
    loaded = load_checkpoint(dst)
    assert list(loaded.keys()) == ["model", "epoch"] and loaded["epoch"] == 7
    assert_equivalent(loaded["model"], _expected(saved_main / "expected_sd.pt"))
    assert (dst / "model.safetensors").is_file()
    assert "__main__.TheModelClass" in json.dumps(read_sidecar(dst)["modules"])


def test_read_checkpoint_of_whole_model_in_this_process(saved_main):
    # TheModelClass does not exist in the test process either.
    got = read_checkpoint(saved_main / "whole_zip.pt")
    expected = _expected(saved_main / "expected_sd.pt")
    assert compare_trees(got, expected) == []
    assert got._metadata == expected._metadata


@pytest.mark.parametrize("name", ["fake_whole.bin", "fake_whole_legacy.bin"])
def test_whole_model_from_uninstalled_package(saved_fakepkg, tmp_path, name):
    dst = tmp_path / "out"
    if name == "fake_whole.bin":
        result = _convert_in_fresh_interpreter(saved_fakepkg / name, dst, saved_fakepkg / "fake_expected_sd.pt")
        assert result["diffs"] == []
        assert result["metadata_equal"] is True
    else:
        convert_checkpoint(saved_fakepkg / name, dst)

    expected = _expected(saved_fakepkg / "fake_expected_sd.pt")
    loaded = load_checkpoint(dst)
    assert_equivalent(loaded, expected)
    assert list(loaded.keys()) == list(expected.keys())
    assert "rope_cache" not in loaded
    assert loaded._metadata == expected._metadata
    assert same_storage(loaded["embed_tokens.weight"], loaded["lm_head.weight"])
    doc = read_sidecar(dst)
    validate_sidecar(doc)
    assert "fakepkg.modeling.FakeForCausalLM" in json.dumps(doc["modules"])


def test_whole_model_converts_in_process_without_the_class(saved_fakepkg, tmp_path):
    import sys

    assert "fakepkg" not in sys.modules
    dst = tmp_path / "out"
    convert_checkpoint(saved_fakepkg / "fake_whole.bin", dst)
    assert "fakepkg" not in sys.modules and "fakepkg.modeling" not in sys.modules
    assert_equivalent(load_checkpoint(dst), _expected(saved_fakepkg / "fake_expected_sd.pt"))
