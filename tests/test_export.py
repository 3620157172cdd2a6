"""`ckpt-convert export` / `export_weights` (issue 27): plain safetensors the ecosystem loads directly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from convert import export_weights
from convert.errors import ConvertError, DestinationNotOwned, OutputExists
from convert.export.write import MARK_KEY, SHA_KEY
from tests.helpers import NO_TORCH, REPO_ROOT, assert_one_line_error, bits, run_cli, run_python, sha256_file


def _lightning_ckpt(path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3))
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    ema = {k: (v * 0.5 if v.is_floating_point() else v.clone()) for k, v in sd.items()}
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
                "callbacks": {"EMA": {"ema_state_dict": ema, "decay": 0.999}}, "hyper_parameters": {"lr": 0.1}}, path)
    return sd, ema


def _assert_equal(loaded: dict, expected: dict) -> None:
    assert list(sorted(loaded)) == sorted(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        assert bits(loaded[key]) == bits(value.contiguous()), key


def test_lightning_ckpt_exports_model_and_ema(tmp_path):
    sd, ema = _lightning_ckpt(tmp_path / "last.ckpt")
    report = export_weights(tmp_path / "last.ckpt", tmp_path / "model.safetensors", strip_prefix="model.")
    assert report.key == "state_dict" and report.tensors == len(sd) and not report.dropped
    _assert_equal(load_file(tmp_path / "model.safetensors"), {k[len("model."):]: v for k, v in sd.items()})

    report = export_weights(tmp_path / "last.ckpt", tmp_path / "ema.safetensors", key="callbacks.EMA.ema_state_dict")
    assert report.key == "callbacks/EMA/ema_state_dict"
    _assert_equal(load_file(tmp_path / "ema.safetensors"), ema)
    proc = run_cli("export", tmp_path / "last.ckpt", tmp_path / "ema2.safetensors", "--key", "callbacks/EMA/ema_state_dict",
                   "--add-prefix", "ema.")
    assert proc.returncode == 0, proc.stderr
    _assert_equal(load_file(tmp_path / "ema2.safetensors"), {f"ema.{k}": v for k, v in ema.items()})

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and MARK_KEY in meta
    assert meta[SHA_KEY] == sha256_file(tmp_path / "last.ckpt")


def test_gpt2_with_tied_embeddings_loads_with_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                     tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    out = tmp_path / "hf"
    config.save_pretrained(out)
    proc = run_cli("export", tmp_path / "pytorch_model.bin", out / "model.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert "lm_head.weight not written" in proc.stdout  # the dropped name is listed, never silently
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    model.save_pretrained(tmp_path / "reference")  # transformers' own choice of names to drop
    _assert_equal(load_file(out / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors"))

    loaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 7, 42, 99]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()

    sharded = tmp_path / "hf-sharded"  # the HF sharded layout, loaded through the index
    report = export_weights(tmp_path / "pytorch_model.bin", sharded, max_shard_size="20KB")
    assert len(report.files) > 1
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(report.files)
    assert sorted(p.name for p in sharded.iterdir()) == sorted([*report.files, "model.safetensors.index.json"])
    config.save_pretrained(sharded)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(sharded).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_shared_storage_rule_matches_safetensors(tmp_path):
    from safetensors.torch import _remove_duplicate_names

    base = torch.arange(24, dtype=torch.float32)
    sd = {"b.weight": base, "a.alias": base, "c.view": base[:6], "d.half": base[12:], "e.t": torch.randn(4, 6).t(),
          "lm_head.weight": (emb := torch.randn(5, 4)), "z.embed": emb}
    torch.save(sd, tmp_path / "sd.pt")
    report = export_weights(tmp_path / "sd.pt", tmp_path / "out.safetensors")
    expected = {name: kept for kept, names in _remove_duplicate_names(sd, discard_names=["lm_head.weight"]).items()
                for name in names}
    assert report.dropped == expected == {"b.weight": "a.alias", "c.view": "a.alias", "d.half": "a.alias",
                                          "lm_head.weight": "z.embed"}
    loaded = load_file(tmp_path / "out.safetensors")
    _assert_equal(loaded, {k: v for k, v in sd.items() if k not in expected})
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        assert f.metadata()["lm_head.weight"] == "z.embed"  # as safetensors' save_model records it

    two_views = torch.arange(10, dtype=torch.int64)  # disjoint views of one storage: each its own bytes
    torch.save({"x": two_views[:4], "y": two_views[4:]}, tmp_path / "views.pt")
    report = export_weights(tmp_path / "views.pt", tmp_path / "views.safetensors")
    assert not report.dropped
    _assert_equal(load_file(tmp_path / "views.safetensors"), {"x": two_views[:4], "y": two_views[4:]})


def _special(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-40, 40, generator=g))
    values = torch.randn(n, generator=g, dtype=torch.float64) * scale
    values[:8] = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 65520.0, 1 + 2**-8])
    return values


@pytest.mark.parametrize("src", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cast_is_bitwise_torch(tmp_path, src):
    values = _special(4096).to(src)
    raw = torch.randint(-2**15, 2**15, (512,), dtype=torch.int16)  # every pattern a 2-byte float has (NaN payloads)
    sd = {"w": values, "t": values[:1024].clone().reshape(32, 32).t(), "i": torch.arange(5), "b": torch.tensor([True, False])}
    if src.itemsize == 2:
        sd["raw"] = raw.view(src)
    torch.save(sd, tmp_path / "sd.pt")
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        out = tmp_path / f"{name}.safetensors"
        report = export_weights(tmp_path / "sd.pt", out, dtype=name)
        loaded = load_file(out)
        assert report.cast == (len(sd) - 2 if src != dtype else 0)
        _assert_equal(loaded, {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()})


def test_cast_streams_large_tensor_in_pieces(tmp_path, monkeypatch):
    import convert.export.cast as cast
    import convert.export.write as write

    monkeypatch.setattr(cast, "CHUNK", 1000)  # many pieces, cast 250 elements at a time
    monkeypatch.setattr(write, "READ_CHUNK", 1001)  # read pieces that split elements, on purpose
    x = _special(3001).to(torch.float32)
    torch.save({"x": x}, tmp_path / "x.pt")
    export_weights(tmp_path / "x.pt", tmp_path / "x.safetensors", dtype="bf16")
    _assert_equal(load_file(tmp_path / "x.safetensors"), {"x": x.to(torch.bfloat16)})


def test_whole_model_pickle_and_default_order(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(model, tmp_path / "whole.pt")
    report = export_weights(tmp_path / "whole.pt", tmp_path / "whole.safetensors")
    _assert_equal(load_file(tmp_path / "whole.safetensors"), model.state_dict())
    assert report.key == ""

    torch.save({"epoch": 1, "model": {"module": model.state_dict()}, "optimizer": {"state": {}}}, tmp_path / "nested.pt")
    report = export_weights(tmp_path / "nested.pt", tmp_path / "nested.safetensors")
    assert report.key == "model/module"
    _assert_equal(load_file(tmp_path / "nested.safetensors"), model.state_dict())


def test_errors_are_one_line(tmp_path):
    sd = torch.nn.Linear(3, 4).state_dict()
    torch.save({"generator": sd, "discriminator": {"w": torch.zeros(10)}}, tmp_path / "gan.pt")
    proc = run_cli("export", tmp_path / "gan.pt", tmp_path / "o.safetensors")
    assert_one_line_error(proc)
    assert "generator (2 tensors" in proc.stderr and "discriminator (1 tensors" in proc.stderr

    torch.save({"model.w": torch.zeros(2), "w": torch.ones(2)}, tmp_path / "dup.pt")
    proc = run_cli("export", tmp_path / "dup.pt", tmp_path / "o.safetensors", "--strip-prefix", "model.")
    assert_one_line_error(proc)
    assert "'w'" in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()

    with pytest.raises(ConvertError, match="no such entry"):
        export_weights(tmp_path / "gan.pt", tmp_path / "o.safetensors", key="ema")


def test_overwrite_only_replaces_an_earlier_export(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "a.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "b.pt")
    out = tmp_path / "m.safetensors"
    export_weights(tmp_path / "a.pt", out)
    with pytest.raises(OutputExists):
        export_weights(tmp_path / "b.pt", out)
    export_weights(tmp_path / "b.pt", out, overwrite=True)
    assert torch.equal(load_file(out)["w"], torch.ones(3))

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, foreign)
    before = foreign.read_bytes()
    with pytest.raises(DestinationNotOwned, match="is not a file `ckpt-convert export` wrote"):
        export_weights(tmp_path / "a.pt", foreign, overwrite=True)
    assert foreign.read_bytes() == before
    (tmp_path / "folder.safetensors").mkdir()  # a folder in place of OUT: never replaced by a file
    with pytest.raises(DestinationNotOwned, match="is not a file `ckpt-convert export` wrote"):
        export_weights(tmp_path / "a.pt", tmp_path / "folder.safetensors", overwrite=True)
    with pytest.raises(DestinationNotOwned, match="is or holds the source"):  # never the source itself
        export_weights(out, out, overwrite=True)
    assert torch.equal(load_file(out)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "folder.safetensors", "foreign.safetensors",
                                                          "m.safetensors"]


def test_dcp_folder_and_trainer_unit(tmp_path):
    from tests.dcp_build import save_single, single_state

    save_single(tmp_path / "dcp")
    report = export_weights(tmp_path / "dcp", tmp_path / "dcp.safetensors")
    assert report.key == "model"
    _assert_equal(load_file(tmp_path / "dcp.safetensors"), dict(single_state()["model"]))

    unit = tmp_path / "checkpoint-500"
    unit.mkdir()
    sd = torch.nn.Linear(3, 4).state_dict()
    torch.save(sd, unit / "pytorch_model.bin")
    torch.save({"state": {}}, unit / "optimizer.pt")
    (unit / "trainer_state.json").write_text("{}")
    export_weights(unit, tmp_path / "unit.safetensors", dtype="bf16")
    _assert_equal(load_file(tmp_path / "unit.safetensors"), {k: v.to(torch.bfloat16) for k, v in sd.items()})




def test_export_without_torch(tmp_path):
    sd, _ = _lightning_ckpt(tmp_path / "last.ckpt")
    proc = run_python(NO_TORCH, "export", tmp_path / "last.ckpt", tmp_path / "m.safetensors", "--strip-prefix", "model.",
                      "--dtype", "fp16", cwd=tmp_path, pythonpath=[REPO_ROOT])
    assert proc.returncode == 0, proc.stderr
    _assert_equal(load_file(tmp_path / "m.safetensors"),
                  {k[6:]: v.to(torch.float16) if v.is_floating_point() else v for k, v in sd.items()})
    proc = run_python(NO_TORCH, "export", tmp_path / "last.ckpt", tmp_path / "s", "--max-shard-size", "100B",
                      cwd=tmp_path, pythonpath=[REPO_ROOT])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s" / "model.safetensors.index.json").is_file()

    from tests.dcp_build import save_single, single_state

    unit = tmp_path / "checkpoint-1"  # a Trainer unit and a DCP folder, torch-free too
    unit.mkdir()
    torch.save(sd, unit / "pytorch_model.bin")
    (unit / "trainer_state.json").write_text("{}")
    save_single(tmp_path / "dcp")
    for src, expected in ((unit, sd), (tmp_path / "dcp", single_state()["model"])):
        out = tmp_path / f"{src.name}.safetensors"
        proc = run_python(NO_TORCH, "export", src, out, "--dtype", "bf16", cwd=tmp_path, pythonpath=[REPO_ROOT])
        assert proc.returncode == 0, proc.stderr
        _assert_equal(load_file(out), {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in expected.items()})



def test_converted_folder_exports_like_its_source(tmp_path):
    from convert import convert_checkpoint

    sd, _ = _lightning_ckpt(tmp_path / "last.ckpt")
    convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "converted")
    direct = export_weights(tmp_path / "last.ckpt", tmp_path / "a.safetensors", strip_prefix="model.", dtype="bf16")
    via = export_weights(tmp_path / "converted", tmp_path / "b.safetensors", strip_prefix="model.", dtype="bf16")
    assert via.key == direct.key == "state_dict"
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    _assert_equal(b, a)
    _assert_equal(b, {k[6:]: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()})
    with safe_open(tmp_path / "b.safetensors", "pt") as f:
        assert f.metadata()[SHA_KEY] == sha256_file(tmp_path / "last.ckpt")  # the original's provenance


def test_failed_export_leaves_nothing_and_file_rename_without_renameat2(tmp_path, monkeypatch):
    import convert.export.write as write
    import convert.primitives.durable as durable

    torch.save({"w": torch.zeros(3)}, tmp_path / "a.pt")

    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write, "seal", broken)
    with pytest.raises(ConvertError, match="cannot write"):
        export_weights(tmp_path / "a.pt", tmp_path / "m.safetensors")
    with pytest.raises(ConvertError, match="cannot write"):  # nor the missing parents it made for OUT
        export_weights(tmp_path / "a.pt", tmp_path / "new" / "deeper" / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no OUT, no temporary folder, no lock
    monkeypatch.undo()

    monkeypatch.setattr(durable, "_renameat2_fn", None)  # the OS lacks renameat2: a hard link claims the name
    export_weights(tmp_path / "a.pt", tmp_path / "m.safetensors")
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], torch.zeros(3))
    (tmp_path / "other").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        durable.rename_noreplace(tmp_path / "other", tmp_path / "m.safetensors")
    assert (tmp_path / "other").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "m.safetensors", "other"]


def test_sharded_overwrite_only_replaces_an_export_folder(tmp_path):
    torch.save({"a": torch.zeros(100), "b": torch.ones(100)}, tmp_path / "sd.pt")
    out = tmp_path / "out"
    report = export_weights(tmp_path / "sd.pt", out, max_shard_size=500)
    assert sorted(report.files) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    report = export_weights(tmp_path / "sd.pt", out, max_shard_size="1MB", overwrite=True, dtype="fp16")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]  # one shard: HF's single-file name
    _assert_equal(load_file(out / "model.safetensors"), {"a": torch.zeros(100, dtype=torch.float16),
                                                         "b": torch.ones(100, dtype=torch.float16)})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DestinationNotOwned, match=r"did not write \(notes.txt\)"):  # the export's own shard is not named
        export_weights(tmp_path / "sd.pt", out, max_shard_size=500, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(DestinationNotOwned, match="is or holds the source"):  # the source's folder: never replaced
        export_weights(tmp_path / "sd.pt", tmp_path, max_shard_size=500, overwrite=True)


def test_numpy_arrays_in_a_plain_pickle(tmp_path):
    import pickle

    import numpy as np

    arrays = {"w": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), "big_endian": np.arange(4, dtype=">f8"),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))}
    (tmp_path / "arrays.pkl").write_bytes(pickle.dumps(arrays, protocol=4))
    export_weights(tmp_path / "arrays.pkl", tmp_path / "a.safetensors", dtype="bf16")
    expected = {k: torch.from_numpy(np.ascontiguousarray(v.astype(v.dtype.newbyteorder("=")))) for k, v in arrays.items()}
    _assert_equal(load_file(tmp_path / "a.safetensors"),
                  {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in expected.items()})
