"""One set of primitives (issue 22): one hasher, one lock, one atomic write, one strides function, one
fault-hook registry, one limits table, one wording for an existing destination; internal errors exit 70."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import signal
import sys

import pytest
import torch

from convert import ConvertError, UnsupportedValue, convert_checkpoint, load_checkpoint, save_checkpoint
from convert.cli import EXIT_INTERNAL, commands, main
from convert.errors import DestinationBusy, OutputExists
from convert.model import tree
from convert.model.limits import LIMITS, Limits
from convert.model.strides import contiguous_strides, is_contiguous
from convert.primitives import durable, faults
from convert.primitives.hashing import BackgroundSha256, sha256_fd, sha256_path
from convert.primitives.lock import RunLock, WriterLock, lock_path
from convert.primitives.signals import Terminated, sigterm_raises
from convert.sidecar import codec, integrity, schema

# ------------------------------------------------------------------ hashing


def test_one_hasher_for_fd_ranges_paths_mappings_and_files_in_the_background(tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sha256_fd(fd, len(data)) == want
        assert sha256_fd(fd) == want  # size None: to the end of the file
        assert sha256_fd(fd, 10) == hashlib.sha256(data[:10]).hexdigest()
    finally:
        os.close(fd)
    assert sha256_path(path) == want
    other = tmp_path / "g.bin"
    other.write_bytes(b"g")
    with BackgroundSha256.of_files([path, other]) as hashes:
        assert hashes.parts() == [{"name": "f.bin", "size": len(data), "sha256": want},
                                  {"name": "g.bin", "size": 1, "sha256": hashlib.sha256(b"g").hexdigest()}]
    # the sidecar layer keeps no hasher of its own
    assert not any(hasattr(integrity, name) for name in ("fd_sha256", "file_sha256", "mapping_sha256"))


@pytest.mark.parametrize("file_offset", [0, 64, 4096 * 3 + 8, 4095])
@pytest.mark.parametrize("out_position", [None, 0, 16, 64, 4096 + 31, 2048])
def test_copy_buffer_views_keep_reads_and_writes_out_of_the_slow_distance(file_offset, out_position):
    # AMD's kernel copy is ~4x slower when the destination lies 1-31 bytes past the source (mod 4096)
    import ctypes

    from convert.primitives.copy_buffer import PAGE, SLOW_DISTANCE, CopyBuffer

    buffer = CopyBuffer(64 << 10)
    view = buffer.view(file_offset, out_position)
    assert len(view) == 64 << 10 and not view.readonly
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    read_distance = (address - file_offset) % PAGE  # pread: page cache → buffer
    assert not 0 < read_distance < SLOW_DISTANCE
    if out_position is None or not 0 < (out_position - file_offset) % PAGE < SLOW_DISTANCE:
        assert read_distance == 0  # the read lands at distance 0 where the write allows it
    if out_position is not None:
        assert not 0 < (out_position - address) % PAGE < SLOW_DISTANCE  # write: buffer → page cache
    view.release()


def test_background_hashes_of_a_missing_file_raise_when_collected(tmp_path):
    with BackgroundSha256.of_files([tmp_path / "absent"]) as hashes, pytest.raises(ConvertError, match="absent"):
        hashes.parts()


# ------------------------------------------------------------------ durable writes


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "journal"
    durable.write_atomic(path, b"one")
    durable.write_atomic(path, [b"tw", b"o"])
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["journal"]


def test_write_atomic_failing_before_the_rename_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b"old")

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        durable.write_atomic(path, b"new", before_rename=fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["report.json"]


# ------------------------------------------------------------------ locks


def test_writer_lock_is_exclusive_and_removed_on_release(tmp_path):
    dst = tmp_path / "out"
    with WriterLock(dst):
        assert lock_path(dst).exists()
        with pytest.raises(DestinationBusy, match="being written by another ckpt-convert run"):
            WriterLock(dst).__enter__()
    assert not lock_path(dst).exists()


def test_run_lock_is_exclusive_kept_and_names_its_holder(tmp_path):
    busy = []

    def error(pid: str) -> ConvertError:
        busy.append(pid)
        return ConvertError(f"held by {pid}")

    with RunLock(tmp_path, ".lock", error):
        assert RunLock.holder_pid(tmp_path, ".lock") == os.getpid()
        with pytest.raises(ConvertError, match=f"held by {os.getpid()}"):
            RunLock(tmp_path, ".lock", error)
    assert busy == [str(os.getpid())]
    assert (tmp_path / ".lock").exists()  # never removed: two runs must lock the same file
    assert RunLock.holder_pid(tmp_path, ".lock") is None


# ------------------------------------------------------------------ strides, wording


def test_one_row_major_strides_function():
    assert contiguous_strides((2, 3, 4)) == (12, 4, 1)
    assert contiguous_strides((2, 0, 4)) == (4, 4, 1)  # as torch: a size-0 dimension counts as 1
    assert contiguous_strides(()) == ()
    assert contiguous_strides([5, 7]) == tuple(torch.empty(5, 7).stride())
    assert is_contiguous((2, 1, 4), (4, 99, 1))  # a size-1 dimension's stride does not matter
    assert not is_contiguous((2, 3), (1, 2))
    assert not is_contiguous((2, 3), (3,))


def test_destination_exists_is_worded_in_one_place(tmp_path):
    assert str(OutputExists.for_path(tmp_path / "o")) == (
        f"{tmp_path / 'o'} already exists; pass --overwrite (overwrite=True) to replace it")
    assert "(created meanwhile by another run)" in str(OutputExists.for_path("o", "created meanwhile by another run"))


# ------------------------------------------------------------------ fault hooks


def test_unknown_fault_point_is_rejected():
    with pytest.raises(ValueError, match="not a registered fault point"):
        faults.point("after-dta")


@pytest.mark.parametrize(("env", "value"), [(faults.WRITE_ENV, "after-dta"), (faults.WRITE_ENV, "after-data:9"),
                                            (faults.KILL_ENV, "journal:x"), (faults.KILL_ENV, "after-data"),
                                            (faults.HANG_ENV, "no-marker")])
def test_a_variable_naming_no_registered_point_is_rejected(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=r"names no fault point|is not REL:MARKER"):
        if env == faults.HANG_ENV:
            faults.hang("a.pt")
        else:
            faults.point("after-data" if env == faults.WRITE_ENV else "journal", 1)


def test_armed_points_elsewhere_are_no_ops(monkeypatch):
    monkeypatch.setenv(faults.WRITE_ENV, "after-sidecar")
    monkeypatch.setenv(faults.KILL_ENV, "journal:5")
    faults.point("after-data")  # another step: returns
    faults.point("journal", 4)  # another count: returns
    faults.hang("a.pt")  # not armed: returns at once
    monkeypatch.setenv(faults.NO_FSYNC_ENV, "1")
    assert not faults.fsync_enabled() and not durable.fsync_enabled()
    assert set(faults.inherited_env()) >= {faults.WRITE_ENV, faults.KILL_ENV, faults.NO_FSYNC_ENV}


def test_the_registry_lists_the_writers_steps():
    from convert.write import folder

    assert folder.FAULT_POINTS == faults.WRITE_POINTS and folder.FAULT_ENV == faults.WRITE_ENV
    assert set(faults.POINTS) == {*faults.WRITE_POINTS, *faults.FALLBACK_WRITE_POINTS, "journal", "compact"}


# ------------------------------------------------------------------ limits


def test_one_limits_table_that_every_module_reads():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIMITS.depth = 10  # type: ignore[misc]
    assert Limits() == LIMITS
    assert LIMITS.tree_depth == tree.TREE_DEPTH and not hasattr(tree, "MAX_DEPTH")
    assert LIMITS.encode_depth == codec.ENCODE_MAX_DEPTH and LIMITS.decode_depth == codec.DECODE_MAX_DEPTH
    assert LIMITS.sidecar_nodes == codec.MAX_NODES
    assert LIMITS.sidecar_json_depth == schema.MAX_SIDECAR_DEPTH and LIMITS.sidecar_bytes == schema.MAX_SIDECAR_BYTES
    assert LIMITS.depth < LIMITS.tree_depth <= LIMITS.encode_depth < LIMITS.decode_depth < LIMITS.sidecar_json_depth


def test_save_of_a_list_nested_390_deep_is_refused_naming_the_depth_limit(tmp_path):
    value: list = []
    for _ in range(390):
        value = [value]
    limit = sys.getrecursionlimit()
    with pytest.raises(UnsupportedValue, match=f"nests deeper than {LIMITS.depth} levels"):
        save_checkpoint({"a": value}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sys.getrecursionlimit() == limit


def test_save_and_convert_refuse_at_the_same_depth(tmp_path):
    value: list = []
    for _ in range(LIMITS.depth + 5):
        value = [value]
    torch.save({"a": value}, tmp_path / "deep.pt")
    with pytest.raises(ConvertError, match=f"deeper than {LIMITS.depth} levels"):
        convert_checkpoint(tmp_path / "deep.pt", tmp_path / "out")
    with pytest.raises(ConvertError, match=f"deeper than {LIMITS.depth} levels"):
        save_checkpoint({"a": value}, tmp_path / "out2")


class _Thing:
    """A class the converter does not construct: read as an inert record (record + its state dict: 2 levels)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner


class _Box(torch.nn.Module):
    """A module whose child is the next one (record + state dict + _modules: 3 levels of the pickle's graph)."""

    def __init__(self, inner: torch.nn.Module | None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        if inner is not None:
            self.inner = inner


# kind → (how one level is made, levels one costs in the reader's count, levels added once at the top)
_NESTINGS = {
    "dict": (lambda v: {"k": v}, 1, 0),
    "OrderedDict": (lambda v: collections.OrderedDict(k=v), 1, 0),
    "list": (lambda v: [v], 1, 0),
    "tuple": (lambda v: (v,), 1, 0),
    "set": (lambda v: frozenset([v]), 1, 1),  # a set of nested frozensets (a set cannot hold a set)
    "object": (_Thing, 2, 0),
    "module": (_Box, 3, 0),
}


def _nested(kind: str, levels: int) -> object:
    """A value whose containers nest exactly `levels` deep as the reader counts them (LIMITS.depth)."""
    make, cost, top = _NESTINGS[kind]
    units = (levels - top) // cost
    value: object = None if kind == "module" else 1
    for _ in range(units):
        value = make(value)
    if kind == "set":
        value = {value}
    for _ in range(levels - top - units * cost):  # lists make up the rest: exactly one level each
        value = [value]
    return value


@pytest.mark.parametrize("kind", list(_NESTINGS))
def test_each_kind_of_nesting_converts_loads_and_inspects_at_the_depth_limit(tmp_path, capsys, kind):
    from convert import compare_trees, read_checkpoint
    from tests.helpers import torch_reference

    value = _nested(kind, LIMITS.depth)
    torch.save(value, tmp_path / "deep.pt")
    convert_checkpoint(tmp_path / "deep.pt", tmp_path / "out")
    loaded = load_checkpoint(tmp_path / "out")
    expected = (read_checkpoint(tmp_path / "deep.pt") if kind == "object"  # records: the safe reader's view
                else torch_reference(torch.load(tmp_path / "deep.pt", weights_only=False)))
    assert compare_trees(expected, loaded) == []
    save_checkpoint(value, tmp_path / "saved")  # the live-object path walks the same graph
    assert compare_trees(loaded, load_checkpoint(tmp_path / "saved")) == []
    capsys.readouterr()
    for argv in (["inspect", str(tmp_path / "out")], ["inspect", str(tmp_path / "deep.pt")],
                 ["verify", str(tmp_path / "deep.pt"), str(tmp_path / "out")]):
        assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("tree:") == 2


@pytest.mark.parametrize("kind", list(_NESTINGS))
def test_each_kind_of_nesting_one_level_deeper_is_refused_before_anything_is_written(tmp_path, capsys, kind):
    value = _nested(kind, LIMITS.depth + 1)
    torch.save(value, tmp_path / "deep.pt")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "deep.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint nests deeper than {LIMITS.depth} levels" in err, err
    with pytest.raises(UnsupportedValue, match=f"nests deeper than {LIMITS.depth} levels"):
        save_checkpoint(value, tmp_path / "saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.pt"]


def _tensor_chain(levels: int) -> torch.Tensor:
    """A tensor whose attribute holds a tensor whose attribute holds ...: 2 levels each (tensor, its __dict__)."""
    value: object = 1
    for i in range(levels // 2):
        t = torch.full((1,), float(i))
        t.inner = value
        value = t
    return value


def test_tensors_nested_through_their_attributes_convert_to_the_depth_limit(tmp_path, capsys):
    """The reader did not count a tensor's attributes as nesting, and the writer and loader recursed through
    them (a few frames per tensor): 150 such tensors failed with 'checkpoint nests too deeply'."""
    from convert import compare_trees
    from tests.helpers import torch_reference

    torch.save(_tensor_chain(LIMITS.depth), tmp_path / "deep.pt")
    convert_checkpoint(tmp_path / "deep.pt", tmp_path / "out")
    expected = torch_reference(torch.load(tmp_path / "deep.pt", weights_only=False))
    assert compare_trees(expected, load_checkpoint(tmp_path / "out")) == []
    assert main(["inspect", str(tmp_path / "out")]) == 0
    torch.save([_tensor_chain(LIMITS.depth)], tmp_path / "deeper.pt")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "deeper.pt"), str(tmp_path / "out2")]) == 2
    assert f"checkpoint nests deeper than {LIMITS.depth} levels" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_recursion_limit_unchanged_after_loading_a_deep_sidecar(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "m.pt")
    convert_checkpoint(tmp_path / "m.pt", tmp_path / "out")
    sidecar = json.loads((tmp_path / "out" / "checkpoint.json").read_text())
    sidecar["root"] = {"$tuple": []}
    for _ in range(300):
        sidecar["root"] = {"$tuple": [sidecar["root"]]}
    limit = sys.getrecursionlimit()
    schema.validate(sidecar, "x")  # deep and valid
    assert sys.getrecursionlimit() == limit
    assert load_checkpoint(tmp_path / "out")["w"].tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ exit codes


def test_an_internal_error_exits_70_in_one_line(tmp_path, monkeypatch, capsys):
    def broken(args: object) -> int:
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(commands, "convert", broken)
    (tmp_path / "a.pt").write_bytes(b"")  # an existing source: the argument checks pass, the command fails
    assert main(["convert", str(tmp_path / "a.pt"), str(tmp_path / "out")]) == EXIT_INTERNAL == 70
    err = capsys.readouterr().err
    assert err == "ckpt-convert: internal error: RuntimeError: a bug (rerun with --debug for details)\n"


def test_bad_input_still_exits_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 2
    assert "internal error" not in capsys.readouterr().err


# ------------------------------------------------------------------ signals


def test_sigterm_raises_in_the_block_and_the_previous_handler_is_back_after():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_raises(Terminated):
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(KeyboardInterrupt), sigterm_raises(KeyboardInterrupt):  # migrate's: exit 130
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
