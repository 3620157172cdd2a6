"""The destination contract (issue 20): --overwrite replaces only a ckpt-convert output that holds
nothing else, never the source or its folder, the current folder or a mount point; and every
change to checkpoint.json is detected by `verify FOLDER` and `load_checkpoint(verify=True)`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from convert import ConvertError, convert_checkpoint, load_checkpoint, save_checkpoint
from convert.errors import CorruptFolder, DestinationNotOwned
from convert.ops.verify import verify_folder
from convert.sidecar.integrity import sidecar_bytes
from convert.write.ownership import check_replaceable
from tests.helpers import assert_one_line_error, folder_snapshot, run_cli, save


def _tree(root: Path) -> dict:
    """Every file under `root` (relative path → bytes) and every folder (→ None)."""
    out: dict = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def _state_dict() -> dict:
    torch.manual_seed(0)
    return {"w": torch.randn(3, 4), "b": torch.randn(4)}


def test_convert_into_the_sources_own_folder_is_refused(tmp_path):
    bert = tmp_path / "bert"
    save(_state_dict(), bert / "pytorch_model.bin", "zip")
    (bert / "config.json").write_text('{"model_type": "bert"}')
    (bert / "sub").mkdir()
    (bert / "sub" / "notes.txt").write_text("mine")
    before = _tree(bert)
    proc = run_cli("convert", bert / "pytorch_model.bin", bert, "--overwrite")
    assert_one_line_error(proc, 2)
    assert "source" in proc.stderr
    assert _tree(bert) == before
    assert sorted(os.listdir(tmp_path)) == ["bert"]  # no lock, no temporary folder left beside it


def test_convert_into_the_current_folder_is_refused(tmp_path):
    work = tmp_path / "work"
    save(_state_dict(), work / "x.pt", "zip")
    before = _tree(work)
    proc = run_cli("convert", "x.pt", ".", "--overwrite", cwd=work)
    assert_one_line_error(proc, 2)
    assert "current folder" in proc.stderr and "internal error" not in proc.stderr
    assert _tree(work) == before


def test_a_folder_holding_the_current_folder_is_refused(tmp_path, src_dir):
    src = save(_state_dict(), src_dir / "x.pt", "zip")
    (tmp_path / "proj" / "deep").mkdir(parents=True)
    proc = run_cli("convert", src, tmp_path / "proj", "--overwrite", cwd=tmp_path / "proj" / "deep")
    assert_one_line_error(proc, 2)
    assert (tmp_path / "proj" / "deep").is_dir()


def test_a_mount_point_is_refused_in_one_line(src_dir):
    mount = next((p for p in ("/proc", "/sys", "/dev") if os.path.ismount(p)), None)
    if mount is None:
        pytest.skip("no mount point to try")
    src = save(_state_dict(), src_dir / "x.pt", "zip")
    proc = run_cli("convert", src, mount, "--overwrite")
    assert_one_line_error(proc, 2)
    assert "mount point" in proc.stderr


def test_a_folder_of_user_files_is_never_replaced(tmp_path, src_dir):
    src = save(_state_dict(), src_dir / "sd.pth", "zip")
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    for name in ("train.py", "README.md", "data/a.csv", "data/b.csv"):
        (project / name).write_text(name)
    before = _tree(project)
    proc = run_cli("convert", src, project, "--overwrite")
    assert_one_line_error(proc, 2)
    assert "README.md" in proc.stderr and "did not write" in proc.stderr  # names what is in the way
    assert _tree(project) == before
    assert sorted(os.listdir(tmp_path)) == ["myproject", "src"]


def test_save_checkpoint_never_replaces_a_folder_of_user_files(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.txt").write_text("keep me")
    with pytest.raises(DestinationNotOwned, match=r"notes\.txt"):
        save_checkpoint({"w": torch.ones(2)}, project, overwrite=True)
    assert _tree(project) == {"notes.txt": b"keep me"}


@pytest.mark.parametrize("shard", [None, 64])
def test_a_previous_output_is_replaced(tmp_path, src_dir, shard):
    src = save({"w": torch.randn(8, 8), "v": torch.randn(8, 8)}, src_dir / "a.pt", "zip")
    dst = tmp_path / "out"
    save_checkpoint({"old": torch.zeros(5)}, dst, max_shard_size=shard)
    convert_checkpoint(src, dst, overwrite=True, max_shard_size=shard)
    assert torch.equal(load_checkpoint(dst)["w"], torch.load(src)["w"])
    convert_checkpoint(src, dst, overwrite=True, max_shard_size=shard)  # its own output again (index included)
    assert verify_folder(dst) == []
    proc = run_cli("convert", src, dst, "--overwrite")
    assert proc.returncode == 0, proc.stderr


def test_an_empty_folder_is_replaced(tmp_path, src_dir):
    src = save(_state_dict(), src_dir / "a.pt", "zip")
    (tmp_path / "out").mkdir()
    convert_checkpoint(src, tmp_path / "out", overwrite=True)
    assert verify_folder(tmp_path / "out") == []


def test_an_output_with_a_user_file_added_is_refused(tmp_path, src_dir):
    src = save(_state_dict(), src_dir / "a.pt", "zip")
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    (dst / "my_eval.txt").write_text("results")
    (dst / "plots").mkdir()
    before = _tree(dst)
    proc = run_cli("convert", src, dst, "--overwrite")
    assert_one_line_error(proc, 2)
    assert "my_eval.txt" in proc.stderr and "plots" in proc.stderr
    assert _tree(dst) == before


def test_an_output_that_does_not_check_out_is_refused(tmp_path, src_dir):
    src = save(_state_dict(), src_dir / "a.pt", "zip")
    a, b = tmp_path / "a", tmp_path / "b"
    convert_checkpoint(src, a)
    convert_checkpoint(src, b)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())  # another conversion's file
    with pytest.raises(DestinationNotOwned, match="another conversion"):
        convert_checkpoint(src, a, overwrite=True)
    (b / "checkpoint.json").write_bytes((b / "checkpoint.json").read_bytes() + b" ")  # edited sidecar
    with pytest.raises(DestinationNotOwned, match="not an intact"):
        convert_checkpoint(src, b, overwrite=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.json").write_text("{}")  # someone else's checkpoint.json
    with pytest.raises(DestinationNotOwned):
        convert_checkpoint(src, tmp_path / "c", overwrite=True)
    assert (tmp_path / "c" / "checkpoint.json").read_text() == "{}"


def test_a_folder_that_holds_the_source_is_refused_whatever_it_holds(tmp_path):
    top = tmp_path / "top"
    src = save(_state_dict(), top / "deep" / "a.pt", "zip")
    with pytest.raises(DestinationNotOwned, match="source"):
        check_replaceable(top, [src])
    with pytest.raises(DestinationNotOwned, match="source"):
        check_replaceable(top / "deep", [src])
    check_replaceable(tmp_path / "absent", [src])  # nothing there: nothing to decide


def test_hf_output_with_copied_files_is_replaced_but_not_with_extras(tmp_path):
    from convert.ops.units import convert_hf_folder

    model = tmp_path / "model"
    model.mkdir()
    torch.save(_state_dict(), model / "pytorch_model.bin")
    (model / "config.json").write_text('{"model_type": "x"}')
    (model / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    convert_hf_folder(model, out)
    assert sorted(json.loads((out / "checkpoint.json").read_text())["integrity"]["copied"]) == \
        ["config.json", "tokenizer.json"]
    convert_hf_folder(model, out, overwrite=True)  # copied files are the output's own
    (out / "extra.bin").write_bytes(b"x")
    with pytest.raises(DestinationNotOwned, match=r"extra\.bin"):
        convert_hf_folder(model, out, overwrite=True)
    with pytest.raises(DestinationNotOwned, match="source"):
        convert_hf_folder(model, model, overwrite=True)


def test_lightning_plugin_replaces_only_checkpoints(tmp_path):
    pytest.importorskip("lightning")
    from convert.lightning import SafetensorsCheckpointIO

    io = SafetensorsCheckpointIO()
    ckpt = tmp_path / "epoch=1.ckpt"
    io.save_checkpoint({"w": torch.ones(2)}, ckpt)
    io.save_checkpoint({"w": torch.zeros(2)}, ckpt)  # its own checkpoint: replaced
    assert torch.equal(load_checkpoint(ckpt)["w"], torch.zeros(2))
    (ckpt / "notes.txt").write_text("mine")
    with pytest.raises(DestinationNotOwned):
        io.save_checkpoint({"w": torch.ones(2)}, ckpt)
    with pytest.raises(DestinationNotOwned):
        io.remove_checkpoint(ckpt)
    assert (ckpt / "notes.txt").read_text() == "mine"
    (ckpt / "notes.txt").unlink()
    io.remove_checkpoint(ckpt)
    assert not ckpt.exists()


# ------------------------------------------------------------------------------ the sealed sidecar

def _edit_sidecar(folder: Path, change) -> None:
    """Rewrite checkpoint.json as the writer would serialize it, with `change` applied (seal untouched)."""
    doc = json.loads((folder / "checkpoint.json").read_bytes())
    change(doc)
    (folder / "checkpoint.json").write_bytes(sidecar_bytes(doc))


def _find(doc, key):
    if isinstance(doc, dict):
        if key in doc:
            yield doc
        for v in doc.values():
            yield from _find(v, key)
    elif isinstance(doc, list):
        for v in doc:
            yield from _find(v, key)


def _set_epoch(doc) -> None:
    hits = [d for d in _find(doc, "epoch") if d["epoch"] == 5]
    assert hits
    for d in hits:
        d["epoch"] = 7


def _change_stride(doc) -> None:
    row = next(t for t in doc["tensors"].values() if t["shape"] == [3, 4])
    assert row["stride"] == [1, 3]  # the transposed view
    row["stride"] = [3, 1]  # still inside its storage: a load would silently give other values


@pytest.mark.parametrize("change", [_set_epoch, _change_stride], ids=["epoch", "stride"])
def test_any_edit_of_checkpoint_json_is_detected(tmp_path, change):
    dst = tmp_path / "out"
    save_checkpoint({"epoch": 5, "w": torch.randn(4, 3).t(), "model": {"b": torch.ones(2)}}, dst)
    assert verify_folder(dst) == []
    _edit_sidecar(dst, change)
    load_checkpoint(dst)  # a plain load still reads it (only verify reads the seal)
    proc = run_cli("verify", dst)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "checkpoint.json" in proc.stdout + proc.stderr
    with pytest.raises(CorruptFolder, match=r"checkpoint\.json"):
        load_checkpoint(dst, verify=True)


def test_a_byte_level_edit_is_detected_too(tmp_path):
    dst = tmp_path / "out"
    save_checkpoint({"epoch": 5, "w": torch.ones(3)}, dst)
    raw = (dst / "checkpoint.json").read_bytes()
    (dst / "checkpoint.json").write_bytes(raw.replace(b'"format":', b'"format" :', 1))  # same content
    assert not verify_folder(dst)  # a FolderCheck: false when there are problems
    with pytest.raises(CorruptFolder):
        load_checkpoint(dst, verify=True)


def test_a_changed_copied_file_is_detected(tmp_path):
    from convert.ops.units import convert_hf_folder

    model = tmp_path / "model"
    model.mkdir()
    torch.save(_state_dict(), model / "pytorch_model.bin")
    (model / "config.json").write_text('{"model_type": "x"}')
    out = tmp_path / "out"
    convert_hf_folder(model, out)
    assert verify_folder(out) == []
    (out / "config.json").write_text('{"model_type": "y"}')
    assert any("config.json" in p for p in verify_folder(out))
    (out / "config.json").unlink()
    assert any("missing" in p for p in verify_folder(out))


def test_folders_of_the_previous_release_still_load_and_verify_as_before(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "v1" / "folder"
    before = folder_snapshot(fixture)
    assert load_checkpoint(fixture)["epoch"] is not None
    with pytest.raises(ConvertError, match="without digests"):
        load_checkpoint(fixture, verify=True)
    assert folder_snapshot(fixture) == before


def test_framework_unit_output_is_replaced_but_not_with_user_files(tmp_path):
    from convert.ops.units import convert_framework_folder

    unit = tmp_path / "checkpoint-500"
    unit.mkdir()
    torch.save({"state": {}, "param_groups": []}, unit / "optimizer.pt")
    (unit / "trainer_state.json").write_text('{"global_step": 500}')
    out = tmp_path / "out" / "checkpoint-500"
    convert_framework_folder(unit, out)
    convert_framework_folder(unit, out, overwrite=True)  # sub-folders and copies of the unit's own files
    (out / "eval.txt").write_text("mine")
    with pytest.raises(DestinationNotOwned, match=r"eval\.txt"):
        convert_framework_folder(unit, out, overwrite=True)
    (out / "eval.txt").unlink()
    (out / "optimizer.pt" / "notes.md").write_text("mine")  # inside a converted sub-folder
    with pytest.raises(DestinationNotOwned, match=r"optimizer\.pt/notes\.md"):
        convert_framework_folder(unit, out, overwrite=True)
    with pytest.raises(DestinationNotOwned):  # the same layout, but no unit source: a user's folder of outputs
        check_replaceable(out, [])


def test_a_check_that_reads_across_another_runs_swap_looks_again(tmp_path, monkeypatch):
    """The check before the lock may read a destination while another run's overwrite swaps it: checkpoint.json
    of one folder, data files of the other look like "a folder mixing two conversions". Seeing the folder
    replaced meanwhile, the check looks again (the CI race of two overwrites hit this); a folder that stays
    the same is still refused."""
    import convert.write.ownership as ownership

    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, src)
    dst, other = tmp_path / "out", tmp_path / "other"
    convert_checkpoint(src, dst)
    convert_checkpoint(src, other)
    real = ownership.output_names
    calls = []

    def swapped_mid_read(folder):
        calls.append(folder)
        if len(calls) == 1:  # the other run's swap lands while this check reads
            os.rename(dst, tmp_path / "old")
            os.rename(other, dst)
            raise DestinationNotOwned(f"{folder} is not an intact ckpt-convert output (mixed); refusing")
        return real(folder)

    monkeypatch.setattr(ownership, "output_names", swapped_mid_read)
    check_replaceable(dst, [src])  # looked again, at the new folder: replaceable
    assert len(calls) == 2

    def mixed(folder):
        calls.append(folder)
        raise DestinationNotOwned(f"{folder} mixes files of different conversions; refusing")

    calls.clear()
    monkeypatch.setattr(ownership, "output_names", mixed)
    with pytest.raises(DestinationNotOwned):  # nothing swapped: the same folder, judged once
        check_replaceable(dst, [src])
    assert len(calls) == 1
