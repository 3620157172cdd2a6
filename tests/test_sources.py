"""Every input kind is a Source, converted, verified and inspected by one operations layer (issue 22).

SOURCE_KINDS lists a builder per kind: a new kind is covered by adding it there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convert import api
from convert.cli import main as cli_main
from convert.ops.convert import ConversionReport
from convert.ops.save import save_checkpoint
from convert.ops.verify import verify_folder
from tests.dcp_build import save_single
from tests.helpers import SIDECAR, read_sidecar


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"embed.weight": torch.randn(64, 32, generator=g), "layer.weight": torch.randn(32, 32, generator=g),
            "layer.bias": torch.zeros(32)}


def hf_folder(folder: Path, state: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 32}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    torch.save(state or _state(), folder / "pytorch_model.bin")
    return folder


def hf_sharded(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    state = _state()
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    torch.save({"embed.weight": state["embed.weight"]}, folder / names[0])
    torch.save({"layer.weight": state["layer.weight"], "layer.bias": state["layer.bias"]}, folder / names[1])
    weight_map = {"embed.weight": names[0], "layer.weight": names[1], "layer.bias": names[1]}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def trainer_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 32)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save({"a": torch.ones(3)}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text("{}")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    return folder


def plain_file(folder: Path) -> Path:
    folder.mkdir(parents=True)
    torch.save({"model": _state(), "epoch": 3, "lr": [0.1, 0.2]}, folder / "ckpt.pt")
    return folder / "ckpt.pt"


SOURCE_KINDS = {"file": plain_file, "dcp": lambda f: save_single(f, {"model": _state(), "step": 3}),
                "hf": hf_folder, "hf-sharded": hf_sharded, "framework": trainer_folder}


def _counts(folder: Path) -> tuple[int, int, int]:
    """(tensors, arrays, bytes) over every sidecar under `folder`, plain entries included."""
    tensors = arrays = size = 0
    for path in folder.rglob(SIDECAR):
        sidecar = read_sidecar(path.parent)
        plain = [i for ids in sidecar.get("entries", {}).values() for i in ids]
        tensors += len(sidecar["tensors"]) + sum(i.startswith("t") for i in plain)
        arrays += len(sidecar["arrays"]) + sum(i.startswith("a") for i in plain)
        size += sum(f["bytes"] for f in sidecar["files"].values())
    return tensors, arrays, size


@pytest.mark.parametrize("kind", sorted(SOURCE_KINDS))
def test_every_kind_converts_to_one_report_type_with_the_sidecars_counts(kind, tmp_path):
    src = SOURCE_KINDS[kind](tmp_path / "src")
    report = api.convert_checkpoint(src, tmp_path / "out")
    assert type(report) is ConversionReport
    assert report.tensors > 0
    assert (report.tensors, report.arrays, report.bytes) == _counts(tmp_path / "out")
    assert api.verify_checkpoint(src, tmp_path / "out") == []


@pytest.mark.parametrize("kind", sorted(SOURCE_KINDS))
def test_every_kind_honours_max_shard_size(kind, tmp_path):
    src = SOURCE_KINDS[kind](tmp_path / "src")
    api.convert_checkpoint(src, tmp_path / "out", max_shard_size=4096)
    shards = sorted(p.name for p in (tmp_path / "out").rglob("*-00001-of-*.safetensors"))
    assert shards, sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert api.verify_checkpoint(src, tmp_path / "out") == []


def test_save_checkpoint_report_counts_are_the_sidecars(tmp_path):
    report = save_checkpoint({"a": torch.ones(3), "b": torch.zeros(2, 2), "c": torch.arange(4)}, tmp_path / "s")
    assert isinstance(report, ConversionReport)
    assert report.tensors == 3
    assert (report.tensors, report.arrays, report.bytes) == _counts(tmp_path / "s")


def test_hf_changed_source_tensor_is_reported(tmp_path):
    src = hf_folder(tmp_path / "hf")
    api.convert_checkpoint(src, tmp_path / "out")
    state = _state()
    state["layer.bias"][3] = 1.0  # one value of one tensor
    torch.save(state, src / "pytorch_model.bin")
    diffs = api.verify_checkpoint(src, tmp_path / "out")
    assert any("layer.bias" in d for d in diffs), diffs
    assert any("sha256" in d or "different file" in d for d in diffs), diffs


def test_hf_sha256_mismatch_alone_is_reported(tmp_path):
    src = hf_folder(tmp_path / "hf")
    api.convert_checkpoint(src, tmp_path / "out")
    torch.save(_state(), src / "pytorch_model.bin", _use_new_zipfile_serialization=False)  # same tensors, other bytes
    diffs = api.verify_checkpoint(src, tmp_path / "out")
    assert diffs and all("<source>" in d for d in diffs), diffs


def test_hf_sharded_changed_part_is_reported(tmp_path):
    src = hf_sharded(tmp_path / "hf")
    api.convert_checkpoint(src, tmp_path / "out")
    torch.save({"embed.weight": _state()["embed.weight"]}, src / "pytorch_model-00001-of-00002.bin",
               _use_new_zipfile_serialization=False)
    diffs = api.verify_checkpoint(src, tmp_path / "out")
    assert any("pytorch_model-00001-of-00002.bin" in d for d in diffs), diffs


def test_hf_copied_files_are_sealed_by_checkpoint_json(tmp_path):
    src = hf_folder(tmp_path / "hf")
    api.convert_checkpoint(src, tmp_path / "out")
    copied = read_sidecar(tmp_path / "out").get("integrity", {}).get("copied", {})
    assert {"config.json", "tokenizer.json"} <= set(copied), copied
    assert verify_folder(tmp_path / "out") == []
    (tmp_path / "out" / "config.json").write_text('{"model_type": "other"}')
    problems = verify_folder(tmp_path / "out")
    assert any("config.json" in p for p in problems), problems


def test_migrate_records_a_changed_hf_source_as_not_verified(tmp_path, monkeypatch):
    from convert.migrate import worker
    from convert.migrate.walker import Job

    src = hf_folder(tmp_path / "tree" / "bert")
    real = worker.verify_checkpoint

    def change_then_verify(*args, **kwargs):
        state = _state()
        state["embed.weight"][0, 0] += 1
        torch.save(state, src / "pytorch_model.bin")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker, "verify_checkpoint", change_then_verify)
    job = Job(kind="hf", source=src, rel="bert", output_rel="bert", size=1, root=tmp_path / "tree")
    entry = worker.run_job(job, str(tmp_path / "dst"))
    assert entry["verified"] is False and entry["status"] == "failed", entry


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_convert_verify_inspect_an_hf_folder(tmp_path, capsys):
    src = hf_folder(tmp_path / "hf")
    code, out, err = _cli(capsys, "convert", src, tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "config.json").is_file()
    code, out, err = _cli(capsys, "verify", src, tmp_path / "out")
    assert code == 0, out + err
    code, out, err = _cli(capsys, "inspect", src)
    assert code == 0 and "layer.bias" in out, out + err
    torch.save({**_state(), "layer.bias": torch.ones(32)}, src / "pytorch_model.bin")
    code, out, err = _cli(capsys, "verify", src, tmp_path / "out")
    assert code == 3 and "layer.bias" in out, out + err


def test_cli_inspect_a_trainer_folder_lists_each_checkpoint(tmp_path, capsys):
    src = trainer_folder(tmp_path / "checkpoint-1")
    code, out, err = _cli(capsys, "inspect", src)
    assert code == 0, err
    assert "optimizer.pt:" in out and "rng_state.pth:" in out


@pytest.mark.parametrize("kind", ["hf", "hf-sharded"])
def test_hf_weights_changed_mid_convert_write_nothing(kind, tmp_path, monkeypatch):
    from convert.errors import ConvertError
    from convert.ops import pipeline

    src = SOURCE_KINDS[kind](tmp_path / "src")
    real = pipeline.make_plan
    victim = sorted(src.glob("pytorch_model*.bin"))[-1]

    def plan_then_rewrite(*args, **kwargs):
        plan = real(*args, **kwargs)
        victim.write_bytes(victim.read_bytes())  # same bytes, a new file: its identity changed
        return plan

    monkeypatch.setattr(pipeline, "make_plan", plan_then_rewrite)
    with pytest.raises(ConvertError, match="changed while it was being converted"):
        api.convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
