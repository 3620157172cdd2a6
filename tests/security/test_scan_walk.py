"""The opcode walk behind `scan`: every global with its offset, after STOP, from the memo, past corruption."""

from __future__ import annotations

import io
import pickle
import zipfile

from convert.scan import scan_file
from convert.scan.opcodes import walk_stream
from tests.security import pk


def _walk(data: bytes):
    return walk_stream(io.BytesIO(data))


def test_globals_with_offsets_and_opcodes():
    data = pk.proto(pk.tup(pk.glob("collections", "OrderedDict"), pk.sglob("os", "system")))
    walk = _walk(data)
    assert walk.error is None and walk.pickles == 1
    assert [(u.qualname, u.opcode) for u in walk.uses] == [("collections.OrderedDict", "GLOBAL"), ("os.system", "STACK_GLOBAL")]
    assert data[walk.uses[0].offset:walk.uses[0].offset + 1] == b"c"
    assert data[walk.uses[1].offset:walk.uses[1].offset + 1] == b"\x93"


def test_stack_global_operands_from_the_memo_and_dup():
    body = (pk.text("posix") + pk.put(1) + pk.pop() + pk.text("system") + pk.put(2) + pk.pop()
            + pk.get(1) + pk.get(2) + b"\x93")
    assert [u.qualname for u in _walk(pk.proto(body)).uses] == ["posix.system"]
    memoize = pk.text("os") + b"\x94" + pk.pop() + pk.text("kill") + b"\x94" + pk.pop() + pk.get(0) + pk.get(1) + b"\x93"
    assert [u.qualname for u in _walk(pk.proto(memoize)).uses] == ["os.kill"]
    computed = pk.call(pk.glob("builtins", "str"), pk.text("os")) + pk.text("system") + b"\x93"
    (use,) = [u for u in _walk(pk.proto(computed)).uses if u.opcode == "STACK_GLOBAL"]
    assert use.module == "" and use.qualname == "<computed global>"


def test_the_walk_goes_on_after_stop_and_keeps_what_precedes_a_corruption():
    benign = pickle.dumps({"w": 1}, protocol=2)
    evil = pk.proto(pk.call(pk.glob("os", "system"), pk.text("true")), 2)
    walk = _walk(benign + benign + evil)
    assert walk.pickles == 3 and [u.qualname for u in walk.uses] == ["os.system"]
    assert walk.uses[0].offset == 2 * len(benign) + 2
    broken = b"\x80\x04" + pk.glob("os", "system") + b"\xff\xfe"
    walk = _walk(broken)
    assert walk.pickles == 0 and walk.error and [u.qualname for u in walk.uses] == ["os.system"]
    # bytes after the last pickle that are no pickle (a legacy file's storages) end the walk quietly
    walk = _walk(benign + b"\x00\x01\x02 tensor bytes")
    assert walk.pickles == 1 and walk.error is None


def test_hostile_lengths_cost_nothing():
    for data in (b"\x80\x04\x8e" + (1 << 42).to_bytes(8, "little") + b"xx.",
                 b"\x80\x04" + b"(" * 100_000 + b"]" + b"t" * 100_000 + b".",
                 b"\x80\x04" + b"]" + b"\x85" * 200_000 + b"."):
        walk = _walk(data)
        assert walk.uses == []


def test_every_pickle_member_of_a_zip_is_scanned(tmp_path):
    evil = pk.proto(pk.call(pk.glob("os", "system"), pk.text("true")), 2)
    path = tmp_path / "extra_member.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        zf.writestr("archive/extra/hidden.pkl", evil)
        zf.writestr("archive/version", b"3\n")
    report = scan_file(path)
    assert report.verdict == "unsafe"
    assert [(f.name, f.member) for f in report.unsafe] == [("os.system", "archive/extra/hidden.pkl")]


def test_not_a_regular_file_is_unreadable(tmp_path):
    import os

    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    report = scan_file(fifo)  # never opened: a FIFO would block
    assert report.verdict == "unreadable" and "not a regular file" in report.error
    assert scan_file(tmp_path).verdict == "unreadable"
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert scan_file(empty).verdict == "unreadable"


def test_selection_by_content_for_the_pre_commit_hook(tmp_path):
    from convert.scan.batch import select

    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "firmware.bin").write_bytes(bytes(range(256)) * 4)  # named like a checkpoint, but is none
    (tmp_path / "weights.data").write_bytes(pickle.dumps({"w": 1}, protocol=4))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "no pickle here")
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
    names = ["logo.png", "firmware.bin", "weights.data", "other.zip", "model.zip"]
    picked = select([tmp_path / n for n in names], skip_non_checkpoints=True)
    assert [p.name for p in picked.files] == ["weights.data", "model.zip"]
    assert [p.name for p in picked.skipped] == ["logo.png", "firmware.bin", "other.zip"]
    assert len(select([tmp_path / n for n in names]).files) == 5  # without the flag every given file is scanned
