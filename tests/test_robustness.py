"""Robustness properties: mutated inputs never crash, hang or leave an output folder behind.

Valid checkpoints (torch zip, legacy, plain pickles) are truncated at a drawn offset, have bytes
flipped, or lose a zip member. Converting the result must either succeed — and then the folder
loads and `verify_checkpoint` finds it equivalent to the safe reading of the mutated file — or
raise a ConvertError subclass with a one-line message, leaving nothing in the output's parent
folder (no destination, no temporary folder). A per-example alarm turns a hang into a failure.
A few mutated files also go through the CLI: exit code 1 or 2, one line on stderr, no traceback.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import signal
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from convert import ConvertError, convert_checkpoint, load_checkpoint, verify_checkpoint
from tests.helpers import NAN_WITH_PAYLOAD, assert_one_line_error, make_net, run_cli, save, trained
from tests.strategies import budget, raw_tensor

HANG_SECONDS = 20


# ------------------------------------------------------------------------------------ base files

def _payload(with_tensors: bool) -> dict:
    out = {
        "epoch": 3, "big": 2**70, "lr": 0.1, "nan": NAN_WITH_PAYLOAD, "name": "run-ü-😀", "blob": b"\x00\xff",
        "shape": (2, 3), "ints": {0: -1, -7: 2**65}, "arr": np.arange(6, dtype=">f4").reshape(2, 3),
        "rng": np.random.RandomState(0).get_state(), "ordered": collections.OrderedDict(b=1, a=[None, True]),
    }
    if with_tensors:
        model = make_net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        trained(model, opt, steps=1)
        flat = raw_tensor(bytes(range(64)), torch.float32)
        out.update(model_state_dict=model.fc3.state_dict(), optimizer_state_dict=opt.state_dict()["param_groups"],
                   views={"w": flat[2:14].view(3, 4).t(), "e": flat[:3].unsqueeze(0).expand(4, 3), "all": flat},
                   bf16=torch.arange(5, dtype=torch.bfloat16))
    return out


@functools.cache
def base_file(fmt: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return save(_payload(fmt in ("zip", "legacy")), Path(tmp) / "base.pt", fmt).read_bytes()


BASE_FORMATS = ["zip", "legacy", "pickle0", "pickle2", "pickle5"]


# ------------------------------------------------------------------------------------ mutations

def truncate(data: bytes, at: int) -> bytes:
    return data[: at % len(data)]


def flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, mask in flips if out else ():
        out[pos % len(out)] ^= mask
    return bytes(out)


def drop_member(data: bytes, which: int) -> bytes:
    """The zip archive rewritten without one of its members (the others byte-for-byte, stored)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    infos = src.infolist()
    dropped = infos[which % len(infos)].filename
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in infos:
            if info.filename != dropped:
                dst.writestr(info.filename, src.read(info.filename))
    return buf.getvalue()


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, str, bytes]:
    fmt = draw(st.sampled_from(BASE_FORMATS))
    data = base_file(fmt)
    kinds = ["truncate", "flip", "truncate+flip"] + (["drop", "drop+flip"] if fmt == "zip" else [])
    kind = draw(st.sampled_from(kinds))
    positions = st.integers(0, len(data) - 1)
    masks = st.integers(1, 255)
    if kind.startswith("drop"):
        data = drop_member(data, draw(st.integers(0, 64)))
    if kind.startswith("truncate"):
        data = truncate(data, draw(positions))
    if kind.endswith("flip"):
        data = flip(data, draw(st.lists(st.tuples(positions, masks), min_size=1, max_size=4)))
    return fmt, kind, data


# ------------------------------------------------------------------------------------ the property

class Hang(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"conversion did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_mutated(data: bytes, tmp: Path) -> str:
    """Convert `data`; assert the robustness contract; return "ok" or the error's class name."""
    src = tmp / "src" / "mutated.pt"
    src.parent.mkdir(parents=True)
    src.write_bytes(data)
    out_parent = tmp / "out"
    out_parent.mkdir()
    dst = out_parent / "ckpt"
    try:
        with alarm(HANG_SECONDS):
            convert_checkpoint(src, dst)
    except ConvertError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        assert list(out_parent.iterdir()) == [], "a failed conversion left files behind"
        assert src.read_bytes() == data
        return type(exc).__name__
    assert [p.name for p in out_parent.iterdir()] == ["ckpt"]
    with alarm(HANG_SECONDS):
        load_checkpoint(dst)
        assert verify_checkpoint(src, dst) == []
    return "ok"


@budget(80)
@given(mutated=mutated_files())
def test_mutated_inputs_convert_or_fail_cleanly(mutated):
    _fmt, _kind, data = mutated
    with tempfile.TemporaryDirectory() as tmp:
        check_mutated(data, Path(tmp))


@pytest.mark.parametrize("fmt", ["pickle0", "pickle2", "pickle5", "legacy"])
def test_truncated_at_every_offset(fmt):
    data = base_file(fmt)
    step = max(1, len(data) // 400)  # every offset of the pickles, ~400 evenly spread ones of larger files
    outcomes = collections.Counter()
    for at in range(0, len(data), step):
        with tempfile.TemporaryDirectory() as tmp:
            outcomes[check_mutated(data[:at], Path(tmp))] += 1
    assert outcomes["ok"] == 0, outcomes  # no proper prefix of a checkpoint is a complete checkpoint


def test_zip_without_each_member(tmp_path):
    data = base_file("zip")
    names = [i.filename for i in zipfile.ZipFile(io.BytesIO(data)).infolist()]
    outcomes = {}
    for i, name in enumerate(names):
        outcomes[name] = check_mutated(drop_member(data, i), tmp_path / str(i))
    storages = [n for n in names if "/data/" in n]
    assert storages and all(outcomes[n] == "MalformedCheckpoint" for n in storages), outcomes
    assert outcomes[next(n for n in names if n.endswith("/data.pkl"))] == "MalformedCheckpoint"
    # a rewritten archive that drops nothing the checkpoint needs still converts
    assert any(v == "ok" for k, v in outcomes.items() if k.endswith(("/version", "/byteorder", "/.data/version"))), outcomes


@pytest.mark.parametrize("fmt,mutate", [
    ("zip", lambda d: d[: len(d) // 2]),
    ("legacy", lambda d: flip(d, [(len(d) // 3, 0x40), (len(d) // 5, 0x08)])),
    ("pickle2", lambda d: d[:-1]),
    ("zip", lambda d: drop_member(d, next(i for i, n in enumerate(zipfile.ZipFile(io.BytesIO(d)).namelist()) if "/data/" in n))),
])
def test_cli_reports_mutated_inputs_in_one_line(tmp_path, fmt, mutate):
    src = tmp_path / "bad.pt"
    src.write_bytes(mutate(base_file(fmt)))
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    proc = run_cli("convert", src, out_parent / "ckpt")
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    assert_one_line_error(proc, proc.returncode)
    assert "internal error" not in proc.stderr, proc.stderr
    assert list(out_parent.iterdir()) == []
