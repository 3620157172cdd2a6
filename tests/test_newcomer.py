"""Issue 24: a newcomer's first hour. Every message true, with the command that was meant; exit codes asserted."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import convert
from convert import ConvertError, load_checkpoint, read_checkpoint
from convert.cli import main
from tests.helpers import BLOCK_TORCH


@pytest.fixture
def sd(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save({"w": torch.ones(2, 3)}, path)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_verify_of_a_checkpoint_file_says_it_is_one_and_shows_verify_src_out(capsys, sd):
    code, _, err = run(capsys, "verify", sd)
    assert code == 2
    line = one_line(err)
    assert "no such folder" not in line
    assert f"{sd} is a checkpoint file, not a converted folder" in line
    assert f"ckpt-convert verify {sd} OUT" in line


def test_verify_with_swapped_arguments_shows_the_right_order(capsys, sd, tmp_path):
    out_dir = tmp_path / "out"
    assert run(capsys, "convert", "-q", sd, out_dir)[0] == 0
    code, _, err = run(capsys, "verify", out_dir, sd)
    assert code == 2
    line = one_line(err)
    assert "swapped" in line and f"ckpt-convert verify {sd} {out_dir}" in line
    assert run(capsys, "verify", sd, out_dir)[0] == 0  # the command it shows works


def test_load_checkpoint_of_a_file_points_at_read_checkpoint(sd):
    with pytest.raises(ConvertError) as info:
        load_checkpoint(sd)
    assert "no such folder" not in str(info.value)
    assert "is a file, not a converted folder" in str(info.value) and "read_checkpoint(" in str(info.value)
    assert torch.equal(read_checkpoint(sd)["w"], torch.ones(2, 3))  # and the function it names reads it


def test_a_file_as_destination_does_not_suggest_overwrite(capsys, sd, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = run(capsys, "convert", sd, notes)
    assert code == 2
    line = one_line(err)
    assert "--overwrite" not in line and "new folder name" in line
    assert notes.read_text() == "mine"
    code, _, err = run(capsys, "convert", "--overwrite", sd, notes)  # and --overwrite does not replace it either
    assert code == 2 and notes.read_text() == "mine"


@pytest.mark.parametrize("argv, said", [
    (["verify", "{missing}", "{tmp}"], "{missing}: no such file"),
    (["verify", "{sd}", "{missing}"], "{missing}: no such folder"),
    (["verify", "{missing}"], "{missing}: no such folder"),
    (["convert", "{missing}", "{tmp}/o"], "{missing}: no such file"),
    (["inspect", "{missing}"], "{missing}: no such file or folder"),
    (["migrate", "{missing}", "{tmp}/o"], "{missing}: no such folder"),
    (["migrate", "{sd}", "{tmp}/o"], "is a file; migrate converts every checkpoint under a folder"),
])
def test_bad_paths_are_one_line_exit_2(capsys, sd, tmp_path, argv, said):
    names = {"missing": tmp_path / "missing.pt", "sd": sd, "tmp": tmp_path}
    code, _, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 2
    assert said.format(**names) in one_line(err)


def test_inspect_of_a_checkpoint_file_does_not_claim_a_conversion(capsys, sd):
    code, out, _ = run(capsys, "inspect", sd)
    assert code == 0
    assert "converted by" not in out
    assert "w: tensor float32 [2, 3]" in out and "dict (1 item)" in out  # and "1 item", not "1 items"


def test_inspect_of_a_converted_folder_says_who_converted_it(capsys, sd, tmp_path):
    run(capsys, "convert", "-q", sd, tmp_path / "out")
    code, out, _ = run(capsys, "inspect", tmp_path / "out")
    assert code == 0 and f"converted by ckpt-convert {convert.__version__}" in out


def test_inspect_of_a_plain_safetensors_file(capsys, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"b": torch.zeros(2, dtype=torch.bfloat16), "a": torch.ones(3, 4)}, path, metadata={"format": "pt"})
    code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    assert "safetensors file: model.safetensors" in out and "2 tensors" in out
    assert "format: 'pt'" in out
    assert "a: float32 [3, 4] 48 B" in out and "b: bfloat16 [2] 4 B" in out


def test_inspect_of_a_corrupt_safetensors_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((1000).to_bytes(8, "little") + b"{}")
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and "header claims 1000 bytes" in one_line(err)


def test_scan_of_an_empty_folder_says_so_exit_2(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "scan", tmp_path / "empty")
    assert code == 2 and out == ""
    assert "nothing to scan: no checkpoint found under" in one_line(err)


def test_scan_counts_a_skipped_readme(capsys, sd, tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    code, out, _ = run(capsys, "scan", "--format", "json", tmp_path)
    assert code == 0
    doc = json.loads(out)
    assert doc["summary"]["files"] == 1 and doc["summary"]["skipped"] == 1
    code, out, _ = run(capsys, "scan", tmp_path)
    assert code == 0 and "1 skipped (not checkpoints)" in out


def test_scan_of_only_skipped_files_passes(capsys, tmp_path):
    """The by-content pre-commit hook hands scan every binary file: none a checkpoint is a clean pass."""
    notes = tmp_path / "notes.bin"
    notes.write_bytes(b"\x00\x01 not a checkpoint")
    code, out, _ = run(capsys, "scan", "--skip-non-checkpoints", notes)
    assert code == 0 and "1 skipped" in out


def test_every_public_error_is_exported():
    import inspect

    import convert.errors as errors

    public = {name for name, obj in vars(errors).items()
              if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__}
    assert "CorruptFolder" in public
    assert public <= set(convert.__all__)
    assert all(getattr(convert, name) is getattr(errors, name) for name in public)


# ------------------------------------------------------------------ lean install (torch blocked in a child)


LEAN_CLI = BLOCK_TORCH + r"""
if __name__ == "__main__":
    from convert.cli import main
    rc = main(sys.argv[1:])
    if any(m.split(".")[0] == "torch" for m in sys.modules):
        sys.exit(99)
    sys.exit(rc)
"""

LEAN_API = BLOCK_TORCH + r"""
import convert
for name in ("load_checkpoint", "read_checkpoint", "verify_checkpoint"):
    args = (sys.argv[1], sys.argv[2]) if name == "verify_checkpoint" else (sys.argv[1],)
    try:
        getattr(convert, name)(*args)
    except convert.MissingDependency as exc:
        assert isinstance(exc, ModuleNotFoundError) and exc.name == "torch"
        print(f"{name}|{exc}")
"""


def run_lean(tmp_path, script: str, *args):
    """Run `script` as a file (so that spawned pool workers re-run its blocker) with the checkout on the path."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    path = tmp_path / "lean_main.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(path), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_lean_migrate_converts_and_says_once_that_verification_needs_torch(tmp_path, sd):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.pt", "b.pt", "c.pt"):
        (src / name).write_bytes(sd.read_bytes())
    proc = run_lean(tmp_path, LEAN_CLI, "migrate", "-q", src, tmp_path / "dst")
    assert proc.returncode == 0, proc.stderr
    assert "FAILED" not in proc.stdout and "internal error" not in proc.stdout + proc.stderr
    assert "converted      3" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "needs torch" in line]
    assert len(warnings) == 1 and "3 converted output(s) not verified" in warnings[0]
    report = json.loads((tmp_path / "dst" / "ckpt-convert-report.json").read_text())
    assert {e["status"] for e in report["files"].values()} == {"converted"}
    assert not any(e["verified"] for e in report["files"].values())
    # with torch, the same migrate verifies what the lean one could not
    assert main(["migrate", "-q", str(src), str(tmp_path / "dst")]) == 0
    report = json.loads((tmp_path / "dst" / "ckpt-convert-report.json").read_text())
    assert all(e["verified"] for e in report["files"].values()), report


def test_lean_api_says_in_one_line_what_needs_torch(tmp_path, sd):
    assert main(["convert", "-q", str(sd), str(tmp_path / "out")]) == 0
    proc = run_lean(tmp_path, LEAN_API, tmp_path / "out", sd)
    assert proc.returncode == 0, proc.stderr
    said = dict(line.split("|", 1) for line in proc.stdout.splitlines())
    assert set(said) == {"load_checkpoint", "read_checkpoint", "verify_checkpoint"}
    for message in said.values():
        assert "needs torch, which is not installed" in message
        assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in message


def test_lean_verify_against_a_source_is_one_line_and_folder_checks_need_no_torch(tmp_path, sd):
    from tests.helpers import assert_one_line_error

    assert main(["convert", "-q", str(sd), str(tmp_path / "out")]) == 0
    proc = run_lean(tmp_path, LEAN_CLI, "verify", sd, tmp_path / "out")
    assert_one_line_error(proc, 2)
    assert "needs torch, which is not installed: pip install torch" in proc.stderr
    # a folder's own integrity, its tree and a plain safetensors file are read from headers: no torch at all
    proc = run_lean(tmp_path, LEAN_CLI, "verify", tmp_path / "out")
    assert proc.returncode == 0 and "is intact" in proc.stdout, proc.stderr
    proc = run_lean(tmp_path, LEAN_CLI, "inspect", tmp_path / "out")
    assert proc.returncode == 0 and "w: tensor float32 [2, 3]" in proc.stdout, proc.stderr
    proc = run_lean(tmp_path, LEAN_CLI, "inspect", tmp_path / "out" / "model.safetensors")
    assert proc.returncode == 0 and "w: float32 [2, 3] 24 B" in proc.stdout, proc.stderr


# ------------------------------------------------------------------ map_location as torch.load takes it

def _saved_on(tmp_path, location: str):
    """A checkpoint whose storages say they lived on `location` (torch.save's location tag), converted."""
    import unittest.mock

    from convert import convert_checkpoint

    ckpt = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16), "step": 3}
    src = tmp_path / f"on_{location.replace(':', '_')}.pt"
    with unittest.mock.patch("torch.serialization.location_tag", return_value=location):
        torch.save(ckpt, src)
    dst = tmp_path / f"{src.stem}_out"
    convert_checkpoint(src, dst)
    sidecar = json.loads((dst / "checkpoint.json").read_text())
    assert sidecar.get("default_device", "cpu") == location or {s["device"] for s in sidecar["storages"].values()} == {location}
    return ckpt, dst


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only behaviour; on CUDA None restores to cuda:0")
def test_cuda_saved_folder_with_map_location_none_raises_like_torch_load(tmp_path):
    from convert import DeviceUnavailable

    _, dst = _saved_on(tmp_path, "cuda:0")
    with pytest.raises(DeviceUnavailable) as info:
        load_checkpoint(dst)
    assert isinstance(info.value, RuntimeError)  # torch.load's kind of error
    assert "'cuda:0'" in str(info.value) and "map_location='cpu'" in str(info.value)


@pytest.mark.parametrize("how", ["cpu", "device", "dict", "callable", "typed-callable"])
def test_cuda_saved_folder_loads_to_cpu_when_mapped(tmp_path, how):
    ckpt, dst = _saved_on(tmp_path, "cuda:0")
    seen = []

    def to_cpu(storage, location):
        seen.append((type(storage).__name__, location))
        return storage if how == "callable" else torch.TypedStorage(wrap_storage=storage, dtype=torch.uint8,
                                                                    _internal=True)

    map_location = {"cpu": "cpu", "device": torch.device("cpu"), "dict": {"cuda:0": "cpu"},
                    "callable": to_cpu, "typed-callable": to_cpu}[how]
    loaded = load_checkpoint(dst, map_location=map_location)
    assert loaded["step"] == 3
    for key in ("w", "b"):
        assert loaded[key].device.type == "cpu" and torch.equal(loaded[key], ckpt[key])
    if how.endswith("callable"):
        assert seen and {loc for _, loc in seen} == {"cuda:0"} and seen[0][0] == "UntypedStorage"


def test_map_location_callable_returning_none_restores_as_saved(tmp_path):
    ckpt, dst = _saved_on(tmp_path, "cpu")
    loaded = load_checkpoint(dst, map_location=lambda storage, location: None)
    assert torch.equal(loaded["w"], ckpt["w"]) and loaded["w"].device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_map_location_dict_leaves_unmapped_locations_as_saved(tmp_path):
    from convert import DeviceUnavailable

    _, dst = _saved_on(tmp_path, "cuda:1")
    with pytest.raises(DeviceUnavailable, match="'cuda:1'"):
        load_checkpoint(dst, map_location={"cuda:0": "cpu"})  # cuda:1 is not remapped: restored as saved
    assert load_checkpoint(dst, map_location={"cuda:1": "cpu"})["w"].device.type == "cpu"


@pytest.mark.parametrize("bad, said", [
    ("gpu7", "is not a device"),
    ({"cuda:0": "nowhere"}, "is not a device"),
    (lambda storage, location: 42, "map_location callable returned int"),
])
def test_bad_map_location_is_one_clear_error(tmp_path, bad, said):
    _, dst = _saved_on(tmp_path, "cpu")
    with pytest.raises(ConvertError, match=said):
        load_checkpoint(dst, map_location=bad)


def test_migrate_with_an_unsafe_and_a_failed_file_exits_3(capsys, tmp_path, sd):
    import pickle

    from tests.helpers import EvilSystem

    src = tmp_path / "src"
    src.mkdir()
    (src / "good.pt").write_bytes(sd.read_bytes())
    (src / "broken.pt").write_bytes(sd.read_bytes()[:200])  # truncated: fails
    with open(src / "evil.pkl", "wb") as f:
        pickle.dump(EvilSystem(tmp_path / "CANARY"), f)
    code, out, _ = run(capsys, "migrate", "-q", "--json", src, tmp_path / "dst")
    doc = json.loads(out)
    assert {rel: e["status"] for rel, e in doc["files"].items()} == {
        "good.pt": "converted", "broken.pt": "failed", "evil.pkl": "unsafe"}
    assert code == doc["exit_code"] == 3 and code & 1 and code & 2  # a gate on either bit sees it
    assert not (tmp_path / "CANARY").exists()
    (src / "broken.pt").unlink()
    assert run(capsys, "migrate", "-q", src, tmp_path / "dst")[0] == 1  # the unsafe file alone: 1


def test_verify_folder_reads_naturally_in_an_if(sd, tmp_path):
    from convert import convert_checkpoint, verify_folder

    out = tmp_path / "out"
    convert_checkpoint(sd, out)
    check = verify_folder(out)
    assert check and check.ok and check == [] and list(check) == [] and len(check) == 0
    data = out / "model.safetensors"
    data.write_bytes(data.read_bytes()[:-1] + b"\x01")
    check = verify_folder(out)
    assert not check and not check.ok and len(check) == 1 and check != []
    assert check[0].startswith("model.safetensors: sha256") and list(check) == list(check.problems)


def test_demo_fits_80_columns_and_names_no_deleted_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert all(len(line) <= 80 for line in out.splitlines()), max(out.splitlines(), key=len)
    assert "all equivalent" in out and "now removed" in out
    assert "ckpt-convert-demo-" not in out  # the temporary folder it deleted is not pointed at
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run(capsys, "demo", "--keep", tmp_path / "kept")
    assert code == 0 and f"the files are in {tmp_path / 'kept'}" in out
    assert "output files" in out.splitlines()[0]  # a wide terminal gets every column
    assert (tmp_path / "kept" / "converted").is_dir()


# ------------------------------------------------------------------ scan --allow for the user's own classes

MYLAB_PICKLE = b"\x80\x02cmylab.models\nNet\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00wq\x03K\x01sb."
OTHER_PICKLE = b"\x80\x02cotherlab.models\nNet\nq\x00)\x81q\x01}q\x02b."


def test_scan_allow_makes_the_users_classes_safe(capsys, tmp_path):
    model = tmp_path / "model.pkl"
    model.write_bytes(MYLAB_PICKLE)
    code, out, _ = run(capsys, "scan", "--fail-on", "suspicious", model)
    assert code == 1 and "SUSPICIOUS" in out and "mylab.models.Net" in out
    code, out, _ = run(capsys, "scan", "--fail-on", "suspicious", "--allow", "mylab.models.*", model)
    assert code == 0, out
    assert "SAFE" in out and "allowed mylab.models.Net" in out
    code, out, _ = run(capsys, "scan", "--format", "json", "--allow", "mylab.*", model)
    doc = json.loads(out)
    assert doc["files"][0]["verdict"] == "safe" and doc["files"][0]["allowed"] == ["mylab.models.Net"]
    other = tmp_path / "other.pkl"
    other.write_bytes(OTHER_PICKLE)
    code, out, _ = run(capsys, "scan", "--fail-on", "suspicious", "--allow", "mylab.models.*", other)
    assert code == 1 and "otherlab.models.Net" in out  # only what the pattern names


def test_scan_allow_from_pyproject_in_the_current_folder(capsys, monkeypatch, tmp_path):
    (tmp_path / "model.pkl").write_bytes(MYLAB_PICKLE)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.ckpt-convert]\nallow = ["mylab.models.*"]\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "scan", "--fail-on", "suspicious", "model.pkl")
    assert code == 0 and "allowed mylab.models.Net" in out
    (tmp_path / "pyproject.toml").write_text('[tool.ckpt-convert]\nallow = ["os.*"]\n')
    code, _, err = run(capsys, "scan", "model.pkl")
    assert code == 2 and "names the os module" in one_line(err)


@pytest.mark.parametrize("pattern", ["*", "os.*", "builtins.*", "torch.*", "subprocess.Popen", "my lab.*"])
def test_scan_allow_refuses_patterns_that_are_not_the_users(capsys, tmp_path, pattern):
    (tmp_path / "model.pkl").write_bytes(MYLAB_PICKLE)
    code, out, err = run(capsys, "scan", "--allow", pattern, tmp_path / "model.pkl")
    assert code == 2 and out == "" and "allow pattern" in one_line(err)


def test_scan_allow_never_allows_a_gadget(capsys, tmp_path):
    from tests.helpers import handmade_os_system_pickle

    canary = tmp_path / "CANARY"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(handmade_os_system_pickle(canary))
    mixed = tmp_path / "mixed.pkl"  # a user's class and a gadget in one file
    cmd = f"touch {canary}".encode()  # (Net(), posix.system(cmd)): never run, the canary proves it
    mixed.write_bytes(b"\x80\x02cmylab.models\nNet\n)\x81}b" + b"cposix\nsystem\nX" + len(cmd).to_bytes(4, "little")
                      + cmd + b"\x85R\x86.")
    for path in (evil, mixed):
        code, out, _ = run(capsys, "scan", "--allow", "mylab.*", "--allow", "posix_x.*", path)
        assert code == 1 and "UNSAFE" in out, out
    assert not canary.exists()


# ------------------------------------------------------------------ migrate --include/--exclude/--dry-run

@pytest.fixture
def tree(tmp_path, sd):
    src = tmp_path / "src"
    for rel in ("models/a.pt", "scratch/b.pt", "c.pth"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(sd.read_bytes())
    (src / "README.txt").write_text("notes")
    return src


def test_migrate_dry_run_writes_nothing_and_says_what_and_why(capsys, tree, tmp_path):
    dst = tmp_path / "dst"
    code, out, _ = run(capsys, "migrate", tree, dst, "--dry-run", "--exclude", "scratch")
    assert code == 0 and not dst.exists()
    assert f"convert  models/a.pt → {dst}/models/a.pt  [file]" in out
    assert "skip     scratch/b.pt: excluded by --exclude scratch" in out
    assert "2 to convert, 1 left out by --include/--exclude, 1 other files" in out
    code, out, _ = run(capsys, "migrate", tree, dst, "--dry-run", "--json", "--include", "*.pt")
    doc = json.loads(out)
    assert code == 0 and not dst.exists()
    assert [c["path"] for c in doc["convert"]] == ["models/a.pt", "scratch/b.pt"]
    assert doc["left_out"] == [{"path": "c.pth", "reason": "not matched by --include *.pt"}]


def test_migrate_include_exclude_convert_only_what_is_selected(capsys, tree, tmp_path):
    dst = tmp_path / "dst"
    code, out, _ = run(capsys, "migrate", "-q", "--json", tree, dst, "--include", "*.pt", "--exclude", "scratch")
    doc = json.loads(out)
    assert code == 0 and set(doc["files"]) == {"models/a.pt"}
    assert {s["path"] for s in doc["skipped_paths"]} == {"c.pth", "scratch/b.pt"}
    assert (dst / "models" / "a.pt" / "checkpoint.json").is_file()
    assert not (dst / "scratch").exists() and not (dst / "c.pth").exists()


def test_output_cut_short_by_head_is_quiet(tmp_path):
    """`| head` closes stdout early: the command ends quietly, exit 0, no BrokenPipeError (issue 24 asked to check)."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    src = tmp_path / "many.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(3000)}, src)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for command in (f"inspect --max-items 5000 {src}", f"scan -v {src}"):
        proc = subprocess.run(["bash", "-c", f'set -o pipefail; "{sys.executable}" -m convert {command} | head -1'],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        assert len(proc.stdout.splitlines()) == 1 and proc.stderr == "", (command, proc.stderr)
