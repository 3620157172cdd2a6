"""The promise matrix (issue 22): every promise the README makes, on every entry path.

The rows are `ENTRY_PATHS` (tests/matrix_paths.py): each path builds a small source of its kind and runs
its write/verify operation through the public surface (CLI, convert_checkpoint, save_checkpoint,
migrate on the process pool and on Ray, the Lightning plugin, scan, export). The columns are the promises; a
path lists in `applies` those that have a meaning for it, and only those combinations are generated
(nothing is skipped at run time). A new entry path joins the whole matrix by one line in ENTRY_PATHS.
A path writing more than one kind of output (export: a file, or a folder of shards) lists them in
`outputs`; the promises about what is written or replaced are checked at each.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.matrix_paths import (
    CHANGED,
    COUNTS,
    FIFO,
    MISSING_WORDING,
    NOT_OWNED_WORDING,
    REPLACE_OWN,
    SHARD,
    SHARDING,
    SOURCE_FOLDER,
    TRUNCATED,
    USER_FILES,
    VERIFY_FOLDER,
    VERIFY_SHA,
    VERIFY_TENSOR,
    AcceleratePath,
    DcpPath,
    EntryPath,
    ExportPath,
    FilePath,
    HfPath,
    LightningPath,
    LivePath,
    MigratePath,
    MigrateRayPath,
    Outcome,
    PauseAndChange,
    ScanPath,
    TrainerPath,
    converted_folders,
    ray_available,
)

ENTRY_PATHS: list[EntryPath] = [
    FilePath(),
    DcpPath(),
    HfPath(),
    TrainerPath(),
    AcceleratePath(),
    LivePath(),
    ScanPath(),
    MigratePath(),
    *([MigrateRayPath()] if ray_available() else []),  # Ray is an optional extra: a row only where it is installed
    LightningPath(),
    ExportPath(),
]


def paths_for(promise: str) -> list:
    return [pytest.param(p, id=p.name) for p in ENTRY_PATHS if promise in p.applies]


# ------------------------------------------------------------------------------------------ shared sources

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """path name → (root, source), built once per module; tests that change a source work on a copy."""
    return {}


def source_of(path: EntryPath, built: dict, tmp_path_factory) -> tuple[Path, Path]:
    if path.name not in built:
        root = tmp_path_factory.mktemp(f"src-{path.name}")
        built[path.name] = (root, path.build(root))
    return built[path.name]


def fresh_source(path: EntryPath, built: dict, tmp_path_factory, tmp_path: Path) -> Path:
    """A private copy of the path's source under tmp_path/src (same relative layout)."""
    root, src = source_of(path, built, tmp_path_factory)
    copy = tmp_path / "src"
    shutil.copytree(root, copy, symlinks=True)
    return copy / src.relative_to(root)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    return {}


def output_of(path: EntryPath, built: dict, converted: dict, tmp_path_factory) -> tuple[Path, Path]:
    """(source, the path's output of it), written once per module; tests that edit an output copy it."""
    _, src = source_of(path, built, tmp_path_factory)
    if path.name not in converted:
        dst = tmp_path_factory.mktemp(f"out-{path.name}") / "out"
        outcome = path.write(src, dst)
        assert outcome.rc == 0, (outcome.rc, outcome.lines)
        converted[path.name] = path.output(dst)
    return src, converted[path.name]


def copy_output(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy" / out.name
    shutil.copytree(out, dst)
    return dst


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """The Ray instance the migrate-ray row starts on first use is shared by the module, stopped at its end."""
    yield
    if ray_available():
        import ray

        if ray.is_initialized():
            ray.shutdown()


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: file bytes (None for a folder, the kind for anything else); for a file,
    its bytes and its inode (a copy put in its place is a replacement)."""
    if folder.is_file():
        return {folder.name: folder.read_bytes(), "inode": str(folder.stat().st_ino).encode()}
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def assert_clean_error(outcome: Outcome, *words: str) -> str:
    assert outcome.rc not in (135, -7, 99) and outcome.rc >= 0, (outcome.rc, outcome.lines)  # never a signal/crash
    assert outcome.rc == 2, (outcome.rc, outcome.lines)
    line = outcome.line
    for word in words:
        assert word in line, line
    return line


def assert_nothing_written(out: Path, dst: Path) -> None:
    """Neither the output `out` (of a write to `dst`) nor a temporary folder or lock beside it exists."""
    assert not os.path.lexists(out), sorted(p.name for p in out.iterdir()) if out.is_dir() else out
    for beside in {out.parent, dst.parent}:
        if beside.exists():
            leftovers = [p.name for p in beside.iterdir() if "ckpt-convert-tmp" in p.name]
            assert not leftovers, leftovers


def each_output(path: EntryPath, built: dict, tmp_path_factory, tmp_path: Path):
    """For each kind of output of the path: (a private copy of its source, dst, extra write arguments, the output)."""
    for i in range(len(path.outputs(tmp_path / "dst"))):
        base = tmp_path / str(i)  # a folder per kind: each run starts from an intact source
        args, out, _ = path.outputs(base / "dst")[i]
        yield fresh_source(path, built, tmp_path_factory, base), base / "dst", args, out


# ------------------------------------------------------------------------------------ regular files only

@pytest.mark.parametrize("path", paths_for(FIFO))
def test_fifo_in_place_of_a_source_file_is_refused(path, built, tmp_path_factory, tmp_path):
    for src, dst, args, out in each_output(path, built, tmp_path_factory, tmp_path):
        target = path.data_file(src)
        target.unlink()
        os.mkfifo(target)
        outcome = path.write(src, dst, **args)  # opening the FIFO would block forever: the CLI's timeout is the failure
        if isinstance(path, MigratePath):  # the walker passes over special files, counted, never opened
            assert outcome.rc == 0 and outcome.report["special_files"] == 1, (outcome.rc, outcome.lines)
        else:
            assert_clean_error(outcome, "FIFO", str(target))
        assert_nothing_written(out, dst)


@pytest.mark.parametrize("path", paths_for(TRUNCATED))
def test_source_truncated_mid_read_is_a_clean_error(path, built, tmp_path_factory, tmp_path):
    """The first read (or mapping) of the source file truncates it (tests/matrix_hook): never SIGBUS (135)."""
    for src, dst, args, out in each_output(path, built, tmp_path_factory, tmp_path):
        target = path.data_file(src)
        marker = dst.parent / "truncated"
        env = {"CKPT_MATRIX_TRUNCATE": str(target), "CKPT_MATRIX_MARKER": str(marker)}
        outcome = path.write(src, dst, env=env, **args)
        assert marker.exists(), "the source was never read through a descriptor or a mapping"
        assert_clean_error(outcome, str(target))
        assert_nothing_written(out, dst)


@pytest.mark.parametrize("path", paths_for(CHANGED))
def test_source_changed_mid_run_writes_nothing(path, built, tmp_path_factory, tmp_path):
    """The run stops after its data files are written (CKPT_CONVERT_FAULT=after-data:stop); one byte of
    the source changes in place; the run goes on and must publish nothing."""
    for src, dst, args, out in each_output(path, built, tmp_path_factory, tmp_path):
        target = path.data_file(src)

        def change(target: Path = target) -> None:
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            with open(target, "r+b") as f:  # same inode, same size
                f.write(data)

        with PauseAndChange(change) as pause:
            outcome = path.write(src, dst, env={"CKPT_CONVERT_FAULT": "after-data:stop"}, **args)
        assert pause.fired, f"the run never stopped at after-data: {outcome.rc} {outcome.lines}"
        assert_clean_error(outcome, "changed while it was being converted", "nothing was written")
        assert_nothing_written(out, dst)


# ------------------------------------------------------------------------------------------------ verify

@pytest.mark.parametrize("path", paths_for(VERIFY_TENSOR))
def test_verify_catches_a_changed_source_tensor(path, built, converted, tmp_path_factory, tmp_path):
    _, out = output_of(path, built, converted, tmp_path_factory)
    changed = path.build(tmp_path, perturb=True)  # the same source but for one element of model w2
    outcome = path.verify(changed, out)
    text = "\n".join(outcome.lines) + outcome.extra.get("stdout", "")
    assert outcome.rc == 3, (outcome.rc, text)
    assert "w2" in text, text


def _reseal(folder: Path, edit) -> None:
    """Apply `edit(sidecar)` to checkpoint.json and seal it again, as a converter would have written it."""
    from convert.sidecar.integrity import seal

    path = folder / "checkpoint.json"
    sidecar = json.loads(path.read_bytes())
    edit(sidecar)
    copied = sidecar["integrity"]["copied"]
    path.write_bytes(seal(sidecar, copied))


@pytest.mark.parametrize("path", paths_for(VERIFY_SHA))
def test_verify_catches_a_changed_recorded_sha256(path, built, converted, tmp_path_factory, tmp_path):
    src, out = output_of(path, built, converted, tmp_path_factory)
    same = path.verify(src, out)
    assert same.rc == 0, (same.rc, same.lines, same.extra.get("stdout"))  # the unedited output verifies

    def edit(sidecar: dict) -> None:
        found = []

        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "sha256" and isinstance(v, str):
                        node[k] = "0" * 64
                        found.append(k)
                    else:
                        walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(sidecar["source"])
        assert found, sidecar["source"]
    edited = copy_output(out, tmp_path)
    for folder in converted_folders(edited):
        _reseal(folder, edit)
        assert path.verify_folder_rc(folder) == 0  # the seal is right: only the recorded source sha256 differs
    outcome = path.verify(src, edited)
    text = "\n".join(outcome.lines) + outcome.extra.get("stdout", "")
    assert outcome.rc == 3, (outcome.rc, text)
    assert "sha256" in text or "<source>" in text, text  # a difference of the source, not of the tree


def _edit_sidecar(folder: Path) -> None:
    path = folder / "checkpoint.json"
    data = path.read_bytes()
    assert data.startswith(b"{")
    path.write_bytes(b"{ " + data[1:])  # still the same JSON, not the same bytes


def _edit_data_file(folder: Path) -> None:
    data_file = sorted(folder.rglob("*.safetensors"))[0]
    data = bytearray(data_file.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor
    data_file.write_bytes(bytes(data))


@pytest.mark.parametrize("path", paths_for(VERIFY_FOLDER))
def test_verify_folder_catches_every_edit(path, built, converted, tmp_path_factory, tmp_path):
    _, out = output_of(path, built, converted, tmp_path_factory)
    first = converted_folders(out)[0]
    assert path.verify_folder_rc(first, via_cli=True) == 0
    edits = [_edit_sidecar, _edit_data_file]
    if path.copied_file:
        edits.append(lambda f: (f / path.copied_file).write_text((f / path.copied_file).read_text() + " "))
    for i, edit in enumerate(edits):
        folder = copy_output(first, tmp_path / str(i))
        edit(folder)
        assert path.verify_folder_rc(folder, via_cli=i == 0) == 3, edit  # the CLI's exit code once, the API for all


# ------------------------------------------------------------------------------------------- overwriting

def _user_folder(out: Path) -> dict:
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"\x89PNG not really")
    return snapshot(out)


def _user_file(out: Path) -> dict:
    """A user's own safetensors file (a real one, not an export) where a file output goes."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"mine": torch.zeros(3)}, out, metadata={"format": "pt"})
    return snapshot(out)


@pytest.mark.parametrize("path", paths_for(USER_FILES))
def test_destination_with_user_files_is_never_replaced(path, built, tmp_path_factory, tmp_path):
    src = fresh_source(path, built, tmp_path_factory, tmp_path)
    dst = tmp_path / "dst"
    for args, out, is_file in path.outputs(dst):
        before = _user_file(out) if is_file else _user_folder(out)
        for overwrite in (False, True):
            outcome = path.write(src, dst, overwrite=overwrite, **args)
            assert_clean_error(outcome, str(out))  # refused for the destination, not for the source
            assert snapshot(out) == before, (overwrite, args)


@pytest.mark.parametrize("path", paths_for(REPLACE_OWN))
def test_previous_output_of_the_same_path_is_replaced(path, built, tmp_path_factory, tmp_path):
    src = fresh_source(path, built, tmp_path_factory, tmp_path)
    dst = tmp_path / "dst"
    for args, out, _ in path.outputs(dst):
        first = path.write(src, dst, **args)
        assert first.rc == 0, (first.rc, first.lines)
        old = path.identity(out)
        if isinstance(path, MigratePath):  # a re-run converts again what changed (and replaces its own output)
            shutil.rmtree(src)
            path.build(src.parent)
        again = path.write(src, dst, overwrite=True, **args)
        assert again.rc == 0, (again.rc, again.lines)
        assert path.identity(out) != old, args  # a new output took its place
        assert path.intact(out), args


@pytest.mark.parametrize("path", paths_for(SOURCE_FOLDER))
def test_the_source_folder_is_never_a_destination(path, built, tmp_path_factory, tmp_path):
    src = fresh_source(path, built, tmp_path_factory, tmp_path)
    folder = path.source_folder(src)
    before = snapshot(tmp_path / "src")
    folder_outputs = [args for args, _, is_file in path.outputs(folder) if not is_file]  # (a file may go beside it)
    assert folder_outputs, "declared source-folder-refused without a folder output"
    for args in folder_outputs:
        outcome = path.write(src, folder, overwrite=True, **args)
        assert_clean_error(outcome, str(folder), "source")
        assert snapshot(tmp_path / "src") == before, args


# ----------------------------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("path", paths_for(SHARDING))
def test_max_shard_size_is_honoured(path, built, tmp_path_factory, tmp_path):
    src = fresh_source(path, built, tmp_path_factory, tmp_path)
    dst = tmp_path / "dst"
    outcome = path.write(src, dst, max_shard_size=SHARD)
    assert outcome.rc == 0, (outcome.rc, outcome.lines)
    sharded = []
    for out in path.folders(path.output(dst, sharded=True)):
        names = sorted(p.name for p in out.iterdir())
        index = [n for n in names if n.endswith(".safetensors.index.json")]
        if index:
            assert any("-00001-of-0000" in n for n in names), names
            weight_map = json.loads((out / index[0]).read_text())["weight_map"]
            sharded.append(len(set(weight_map.values())))
    assert path.intact(path.output(dst, sharded=True))
    assert sharded and max(sharded) >= 2, sharded  # the model's state dict (16 KiB) is split in shards


# --------------------------------------------------------------------------------------- one-line wording

@pytest.fixture(scope="module")
def reference_lines(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """What the plain-file path says in each situation, and the path it names there."""
    root = tmp_path_factory.mktemp("reference")
    file_path = FilePath()
    src = file_path.build(root)
    missing = root / "gone.pt"
    dst = root / "owned-by-user"
    _user_folder(dst)
    return {"missing": (file_path.write(missing, root / "o1").line, str(missing)),
            "not-owned": (file_path.write(src, dst, overwrite=True).line, str(dst))}


@pytest.mark.parametrize("path", paths_for(MISSING_WORDING))
def test_missing_source_has_one_wording(path, reference_lines, tmp_path):
    line, named = reference_lines["missing"]
    missing = tmp_path / "nothere"
    outcome = path.write(missing, tmp_path / "dst")
    assert_clean_error(outcome)
    assert outcome.line == line.replace(named, str(missing))
    assert_nothing_written(path.output(tmp_path / "dst"), tmp_path / "dst")


@pytest.mark.parametrize("path", paths_for(NOT_OWNED_WORDING))
def test_destination_not_owned_has_one_wording(path, reference_lines, built, tmp_path_factory, tmp_path):
    """Where the path writes a folder (the reference's situation: a folder of user files in the way)."""
    line, named = reference_lines["not-owned"]
    src = fresh_source(path, built, tmp_path_factory, tmp_path)
    dst = tmp_path / "dst"
    folders = [(args, out) for args, out, is_file in path.outputs(dst) if not is_file]
    assert folders, "declared not-owned-wording without a folder output"
    for args, out in folders:
        _user_folder(out)
        outcome = path.write(src, dst, overwrite=True, **args)
        assert_clean_error(outcome)
        assert outcome.line == line.replace(named, str(out))


# ----------------------------------------------------------------------------------------- report counts

@pytest.mark.parametrize("path", paths_for(COUNTS))
def test_report_counts_equal_the_sidecars(path, built, tmp_path_factory, tmp_path):
    src = fresh_source(path, built, tmp_path_factory, tmp_path)
    dst = tmp_path / "dst"
    outcome = path.write_api(src, dst)
    assert outcome.rc == 0, (outcome.rc, outcome.lines)
    expected = path.output_counts(path.output(dst))
    assert expected["tensors"] > 0
    assert path.report_counts(outcome) == expected


def test_every_entry_path_is_in_the_matrix():
    """Every promise has rows, and every path has promises: a new path added to ENTRY_PATHS is exercised."""
    for path in ENTRY_PATHS:
        assert path.applies, path
    assert len({p.name for p in ENTRY_PATHS}) == len(ENTRY_PATHS)
